"""Tensor parallelism: one model's forward pass split over N ranks, Megatron-style.

``load_model(path, tensor_parallel=N)`` (``--tensor-parallel N`` on run, chat and bench) cuts
the weights as the recipe's ops declare (rules.py: attention by KV-head groups, feed-forwards
column then row, MoE by whole experts or sliced, embedding and head by vocabulary), quantised
weights along whole blocks (shards.py), checked for the whole model at load time (plan.py). Each
rank runs the unchanged recipe executor over its shards on its own backend (runner.py), and
the weights that were cut add their one collective (rank_backend.py): an all-reduce after each
row-parallel projection, an all-gather of the head's logits. The collectives run between the
threads of this process on the CPU (comm.py) or between GPUs through NCCL/RCCL (nccl.py).
"""

from .plan import ShardPlan, build_plan
from .runner import TensorParallelExecutor, shard_model
from .shards import Shard, ShardError

__all__ = ["Shard", "ShardError", "ShardPlan", "TensorParallelExecutor", "build_plan", "shard_model"]
