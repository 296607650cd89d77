"""The conformance suite: proves an architecture plugin, ours or a third party's.

For every tiny model the recipe declares (``tiny:``) it builds the model in
Hugging Face form (random weights, written by transformers) and GGUF form
(F32, Q8_0, Q4_0), then checks detection, tensor-map coverage, HF == GGUF,
prefill-then-decode == full forward, determinism, batch == singles, quantised
variants near float, GPU == CPU (when a GPU is present), logits against
transformers (when it is installed), and the GGUF that llama.cpp's own
converter writes against transformers, its metadata keys audited (see
rocmforge.testing.llamacpp).

Run it with ``rocmforge conformance ARCH`` or from pytest through
:func:`collect` (see tests/test_conformance.py).
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

# NMSE bounds (llama.cpp test-backend-ops style).
NMSE_EXACT = 1e-10       # same float32 weights through two file formats / code paths
NMSE_TRANSFORMERS = 1e-5
NMSE_GPU = 5e-4
# Quantised files, in three parts:
# - the weights themselves: NMSE of the dequantised tensors against the float ones, at most what the
#   format gives Gaussian weights with a margin (Q8_0 ~2.9e-5, Q4_0 ~6e-3 measured);
# - Q8_0 logits: each layer adds its rounding error to the residual stream, so the bound is per layer;
# - Q4_0 logits: how much a model amplifies weight noise depends on the model (post-norm-only blocks,
#   OLMo 2 / EXAONE 4, amplify it ~5x more than pre-norm ones), so the bound is calibrated on the
#   model itself: the Q8_0 run measures its sensitivity (logits NMSE per unit of weight NMSE), which
#   predicts the Q4_0 logits error from the Q4_0 weight error; the measured error must stay within
#   NMSE_QUANT_HEADROOM of the prediction (0.6x-1.4x seen across the zoo; a wrong kernel or layout
#   is off by orders of magnitude).
NMSE_QUANT_WEIGHTS = {"Q8_0": 1e-4, "Q4_0": 1e-2}
NMSE_Q8_PER_LAYER = 1e-3
NMSE_QUANT_HEADROOM = 2.0

PROMPT = [3, 17, 42, 99, 7, 250, 128, 64, 5, 31, 200, 11, 77, 150, 9, 240, 1, 33, 66, 180]


@dataclass
class CheckResult:
    arch: str
    model: str
    check: str
    status: str          # "pass", "fail", "skip"
    detail: str = ""


def nmse(got: np.ndarray, ref: np.ndarray) -> float:
    got, ref = np.asarray(got, np.float64), np.asarray(ref, np.float64)
    if got.shape != ref.shape:
        return float("inf")
    if not np.isfinite(got).all():
        return float("nan")
    return float(((got - ref) ** 2).sum() / max((ref**2).sum(), 1e-30))


def _ok(value: float, bound: float) -> bool:
    return bool(np.isfinite(value) and value <= bound)   # NaN never passes


class _Tiny:
    """One tiny model in its forms, built lazily in ``workdir``."""

    def __init__(self, arch: str, tiny: dict, workdir: Path):
        self.arch, self.tiny, self.name = arch, tiny, tiny["name"]
        self.dir = workdir / self.name
        self._models: dict[str, object] = {}

    @property
    def vocab(self) -> int:
        return int(self.tiny["config"]["vocab_size"])

    @property
    def prompt(self) -> list[int]:
        return [p % self.vocab for p in PROMPT]

    def hf_dir(self) -> Path:
        if not (self.dir / "hf" / "config.json").exists():
            from .tiny import make_hf_model

            make_hf_model(self.tiny["hf_class"], self.tiny["config"], self.dir / "hf", seed=1)
        return self.dir / "hf"

    def gguf(self, qtype: str = "F32") -> Path:
        path = self.dir / f"model-{qtype}.gguf"
        if not path.exists():
            from .tiny import hf_to_gguf

            hf_to_gguf(self.hf_dir(), path, qtype)
        return path

    def llamacpp_gguf(self) -> Path:
        """The HF form converted by llama.cpp's own convert_hf_to_gguf.py (F32)."""
        path = self.dir / "model-llamacpp.gguf"
        if not path.exists():
            from .llamacpp import convert, source_dir

            src = source_dir()
            if src is None:
                raise _Skip("llama.cpp's converter is not available (set ROCMFORGE_LLAMA_CPP to a llama.cpp tree, "
                            "or allow pip to download the llama-cpp-python sdist)")
            try:
                convert(self.hf_dir(), path, src)
            except NotImplementedError as exc:
                raise _Skip(str(exc)) from None
        return path

    def model(self, form: str, device: str = "cpu"):
        key = f"{form}/{device}"
        if key not in self._models:
            from ..model import load_model

            path = {"hf": self.hf_dir, "llamacpp": self.llamacpp_gguf}.get(form, lambda: self.gguf(form))()
            self._models[key] = load_model(str(path), device=device, tokenizer=False)
        return self._models[key]


def _checks() -> list[tuple[str, Callable[[_Tiny], str]]]:
    def detection(t: _Tiny) -> str:
        for form in ("hf", "F32"):
            got = t.model(form).arch
            if got != t.arch:
                raise AssertionError(f"{form} form detected as '{got}', expected '{t.arch}'")
        return "HF config.json and GGUF metadata both detected"

    def coverage(t: _Tiny) -> str:
        from ..loaders.detect_format import open_model_file
        from ..registry import get
        from ..tensor_map import check_complete, map_tensors

        spec = get(t.arch)
        for path in (t.hf_dir(), t.gguf()):
            loaded = open_model_file(str(path))
            mapped = map_tensors(spec.map_obj, loaded.format, loaded.tensors, str(path))
            check_complete(spec.map_obj, mapped, t.model("hf").hparams["n_layer"], str(path))
        return f"{len(loaded.tensors)} GGUF tensors mapped, none missing"

    def hf_equals_gguf(t: _Tiny) -> str:
        a, b = t.model("hf").logits(t.prompt), t.model("F32").logits(t.prompt)
        e = nmse(b, a)
        assert _ok(e, NMSE_EXACT), f"NMSE {e:.3g} > {NMSE_EXACT}"
        return f"NMSE {e:.2e}"

    def prefill_decode(t: _Tiny) -> str:
        m = t.model("F32")
        full = m.logits(t.prompt)
        s = m.new_session(len(t.prompt))
        split = len(t.prompt) // 2
        rows = [s.feed(t.prompt[:split], all_logits=True)]
        rows += [s.feed([tok], all_logits=True) for tok in t.prompt[split:]]
        e = nmse(np.concatenate(rows), full)
        assert _ok(e, 1e-9), f"NMSE {e:.3g}"
        return f"prefill {split} + {len(t.prompt) - split} decode steps, NMSE {e:.2e}"

    def determinism(t: _Tiny) -> str:
        m = t.model("F32")
        a, b = m.logits(t.prompt), m.logits(t.prompt)
        assert np.array_equal(a, b), "two forwards of the same tokens differ"
        from ..generate import generate_ids
        from ..sampler import SamplingParams

        p = SamplingParams(temperature=1.0, top_k=0, top_p=1.0, seed=7)
        g1 = list(generate_ids(m, t.prompt[:5], 12, p))
        g2 = list(generate_ids(m, t.prompt[:5], 12, p))
        assert g1 == g2, f"same seed, different tokens: {g1} vs {g2}"
        return "bitwise-equal logits; same seed, same 12 tokens"

    def batch(t: _Tiny) -> str:
        m = t.model("F32")
        seqs = [t.prompt[:7], t.prompt[3:15], t.prompt[:1], t.prompt]
        batched = m.logits_batch(seqs)
        worst = max(nmse(b, m.logits(s)) for b, s in zip(batched, seqs))
        assert _ok(worst, 1e-9), f"worst NMSE {worst:.3g}"
        return f"{len(seqs)} sequences of lengths {[len(s) for s in seqs]}: worst NMSE {worst:.2e}"

    def quantized(t: _Tiny) -> str:
        f32 = t.model("F32")
        ref = f32.logits(t.prompt)
        n_layer = int(f32.hparams["n_layer"])
        weights, logits = {}, {}
        for q in NMSE_QUANT_WEIGHTS:
            m = t.model(q)
            num = den = 0.0
            for name, mt in m.tensors.items():
                if mt.raw.qtype != q:
                    continue
                a = mt.raw.dequantize().astype(np.float64)
                b = f32.tensors[name].raw.dequantize().astype(np.float64)
                num, den = num + float(((a - b) ** 2).sum()), den + float((b * b).sum())
            assert den > 0, f"{q}: no tensor of the {q} file is stored as {q}"
            weights[q], logits[q] = num / den, nmse(m.logits(t.prompt), ref)
            assert _ok(weights[q], NMSE_QUANT_WEIGHTS[q]), \
                f"{q} weights: NMSE {weights[q]:.3g} > {NMSE_QUANT_WEIGHTS[q]}"
        bound8 = NMSE_Q8_PER_LAYER * n_layer
        assert _ok(logits["Q8_0"], bound8), f"Q8_0 logits: NMSE {logits['Q8_0']:.3g} > {bound8:g} ({n_layer} layers)"
        sensitivity = logits["Q8_0"] / weights["Q8_0"]
        predicted = sensitivity * weights["Q4_0"]
        bound4 = NMSE_QUANT_HEADROOM * predicted
        assert _ok(logits["Q4_0"], bound4), (f"Q4_0 logits: NMSE {logits['Q4_0']:.3g} > {bound4:.3g} "
                                             f"({NMSE_QUANT_HEADROOM}x the {predicted:.3g} that Q8_0 predicts)")
        return (f"weights Q8_0 {weights['Q8_0']:.1e}, Q4_0 {weights['Q4_0']:.1e}; logits Q8_0 "
                f"{logits['Q8_0']:.1e}, Q4_0 {logits['Q4_0']:.1e} ({logits['Q4_0'] / predicted:.2f}x predicted)")

    def gpu(t: _Tiny) -> str:
        from ..backends import gpu_unavailable_reason

        reason = gpu_unavailable_reason()
        if reason:
            raise _Skip(reason)
        out = []
        for form in ("F32", "Q4_0"):
            ref = t.model(form, "numpy").logits(t.prompt)     # the float reference
            e = nmse(t.model(form, "gpu").logits(t.prompt), ref)
            assert _ok(e, NMSE_GPU), f"{form}: GPU vs CPU NMSE {e:.3g} > {NMSE_GPU}"
            out.append(f"{form} {e:.1e}")
        return "GPU vs CPU " + ", ".join(out)

    def transformers(t: _Tiny) -> str:
        try:
            import torch  # noqa: F401
            import transformers  # noqa: F401
        except ImportError:
            raise _Skip("transformers/torch not installed") from None
        from .tiny import hf_logits

        ref = hf_logits(t.hf_dir(), t.prompt)
        got = t.model("hf").logits(t.prompt)
        e = nmse(got, ref)
        assert _ok(e, NMSE_TRANSFORMERS), f"NMSE {e:.3g} > {NMSE_TRANSFORMERS}"
        bad = np.nonzero(got.argmax(-1) != ref.argmax(-1))[0]
        assert len(bad) == 0, f"argmax differs at positions {bad.tolist()}"
        return f"NMSE {e:.2e}, same argmax at all {len(t.prompt)} positions"

    def llamacpp(t: _Tiny) -> str:
        """The GGUF a user downloads: written by llama.cpp's converter, held to transformers, keys audited."""
        if t.tiny.get("llamacpp"):
            raise _Skip(f"llama.cpp's converter loses this model's quirk: {t.tiny['llamacpp']}")
        try:
            import torch  # noqa: F401
            import transformers  # noqa: F401
        except ImportError:
            raise _Skip("transformers/torch not installed") from None
        from ..config_audit import unaccounted_gguf
        from .tiny import hf_logits

        m = t.model("llamacpp")
        arch = str(m.metadata.get("general.architecture"))
        unknown = unaccounted_gguf(m.spec.recipe_obj, arch, set(m.metadata))
        assert not unknown, (f"llama.cpp writes keys the recipe neither reads nor lists in config.gguf_inert / "
                             f"gguf_refuses: {', '.join(unknown)}")
        ref = hf_logits(t.hf_dir(), t.prompt)
        got = m.logits(t.prompt)
        e = nmse(got, ref)
        assert _ok(e, NMSE_TRANSFORMERS), f"llama.cpp-converted GGUF vs transformers: NMSE {e:.3g} > {NMSE_TRANSFORMERS}"
        return f"llama.cpp GGUF ({arch}, {len(m.tensors)} tensors) vs transformers: NMSE {e:.2e}"

    return [("detection", detection), ("coverage", coverage), ("hf_equals_gguf", hf_equals_gguf),
            ("prefill_decode", prefill_decode), ("determinism", determinism), ("batch", batch),
            ("quantized", quantized), ("gpu", gpu), ("transformers", transformers), ("llamacpp", llamacpp)]


class _Skip(Exception):
    pass


CHECKS = [name for name, _ in _checks()]


def collect(arch: str | None = None) -> list[tuple[str, str]]:
    """(arch, tiny model name) pairs for every registered architecture (or one)."""
    from ..registry import architectures

    specs = architectures()
    names = [arch] if arch else sorted(specs)
    return [(a, t["name"]) for a in names for t in specs[a].recipe_obj.tiny]


_workdirs: dict[str, _Tiny] = {}


def run_check(arch: str, tiny_name: str, check: str, workdir: str | Path | None = None) -> CheckResult:
    """Run one check (models are built once per process and reused)."""
    from ..registry import get

    key = f"{arch}/{tiny_name}"
    if key not in _workdirs:
        spec = get(arch)
        tiny = next((t for t in spec.recipe_obj.tiny if t["name"] == tiny_name), None)
        if tiny is None:
            raise KeyError(f"{arch} has no tiny model '{tiny_name}'")
        base = Path(workdir) if workdir else Path(tempfile.mkdtemp(prefix="rocmforge-conformance-"))
        _workdirs[key] = _Tiny(arch, tiny, base)
    t = _workdirs[key]
    fn = dict(_checks())[check]
    try:
        return CheckResult(arch, tiny_name, check, "pass", fn(t))
    except _Skip as s:
        return CheckResult(arch, tiny_name, check, "skip", str(s))
    except AssertionError as exc:
        return CheckResult(arch, tiny_name, check, "fail", str(exc))
    except Exception as exc:
        return CheckResult(arch, tiny_name, check, "fail", f"{type(exc).__name__}: {exc}")


def run_conformance(arch: str, workdir: str | Path | None = None, checks: list[str] | None = None,
                    on_result: Callable[[CheckResult], None] | None = None) -> list[CheckResult]:
    from ..registry import get

    spec = get(arch)
    if not spec.recipe_obj.tiny:
        return [CheckResult(arch, "-", "tiny models", "fail",
                            f"{spec.recipe_obj.file} declares no tiny models (add a 'tiny:' section)")]
    results = []
    for a, name in collect(arch):
        for check in checks or CHECKS:
            r = run_check(a, name, check, workdir)
            results.append(r)
            if on_result:
                on_result(r)
    return results


def as_dicts(results: list[CheckResult]) -> list[dict]:
    return [asdict(r) for r in results]
