"""The fast defaults: data-loader workers per device, torch.compile settings, mixed precision
that also works on the CPU, and a compiled run end to end."""

from __future__ import annotations

import logging

import pytest
import torch
from omegaconf import OmegaConf

from qaexp.checks import validate_settings
from qaexp.config import Device, HardwareConfig, MixedPrecision, TrainerConfig
from qaexp.errors import QAExpError
from qaexp.training import runtime
from qaexp.training.runtime import compile_plugin, dataloader_workers, make_accelerator
from tests.conftest import TINY_RUN, compose, read_jsonl, run_cli


def test_compile_keys_compose_typed():
    cfg = OmegaConf.to_object(compose(["trainer.compile=true", "trainer.compile_dynamic=false"]))
    assert cfg.trainer.compile is True and cfg.trainer.compile_dynamic is False
    assert cfg.trainer.compile_backend == "inductor"
    default = OmegaConf.to_object(compose([]))
    assert default.trainer.compile is False and default.trainer.compile_dynamic is None
    assert default.hardware.dataloader_workers is None
    assert default.trainer.eval_batch_size > default.trainer.train_batch_size


def test_dataloader_workers_per_device(monkeypatch):
    auto = HardwareConfig()
    assert dataloader_workers(auto, "cpu") == 0  # workers would take cores from the model
    monkeypatch.setattr("os.sched_getaffinity", lambda _: set(range(16)), raising=False)
    assert dataloader_workers(auto, "gpu") == 4
    assert dataloader_workers(HardwareConfig(num_processes=8), "gpu") == 1
    assert dataloader_workers(HardwareConfig(dataloader_workers=3), "cpu") == 3


def test_negative_workers_fail_naming_the_key():
    cfg = OmegaConf.to_object(compose(["hardware.dataloader_workers=-1"]))
    with pytest.raises(QAExpError, match=r"hardware\.dataloader_workers=-1"):
        validate_settings(cfg)


def test_static_compile_with_many_widths_warns(caplog):
    many = OmegaConf.to_object(compose(["trainer.compile=true", "trainer.compile_dynamic=false"]))
    with caplog.at_level(logging.WARNING, logger="qaexp.checks"):
        validate_settings(many)
    assert "trainer.pad_to_multiple_of=64" in caplog.text
    caplog.clear()
    bucketed = OmegaConf.to_object(
        compose(
            [
                "trainer.compile=true",
                "trainer.compile_dynamic=false",
                "trainer.pad_to_multiple_of=64",
            ]
        )
    )
    with caplog.at_level(logging.WARNING, logger="qaexp.checks"):
        validate_settings(bucketed)
    assert caplog.text == ""


def test_unknown_compile_backend_is_a_clear_error():
    with pytest.raises(QAExpError, match=r"trainer\.compile_backend=fast.*inductor"):
        compile_plugin("fast", None)
    assert compile_plugin("inductor", False).to_kwargs()["dynamic"] is False


@pytest.fixture
def fresh_accelerator_state():
    """Accelerate keeps one process-wide state: an Accelerator made earlier in this pytest
    process with another precision would refuse bf16."""
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(reset_partial_state=True)
    yield
    AcceleratorState._reset_state(reset_partial_state=True)


@pytest.fixture
def cpu_with_bf16(monkeypatch):
    """A CPU with AVX-512 BF16, whatever this one has: the capability check answers yes."""
    monkeypatch.setattr(runtime, "cpu_bf16_instructions", lambda: ["avx512_bf16"])


@pytest.fixture
def cpu_without_bf16(monkeypatch):
    monkeypatch.setattr(runtime, "cpu_bf16_instructions", lambda: [])


def test_bf16_on_a_cpu_without_bf16_instructions_is_refused(cpu_without_bf16):
    hardware = HardwareConfig(device=Device.cpu, mixed_precision=MixedPrecision.bf16)
    with pytest.raises(QAExpError) as refused:
        runtime.resolve_mixed_precision(hardware, "cpu")
    message = str(refused.value)
    assert "hardware.mixed_precision=bf16" in message
    assert "avx512_bf16" in message and "amx_bf16" in message  # the flags it lacks
    assert "hardware.mixed_precision=no" in message  # what to use instead


def test_bf16_on_the_cpu_is_asked_for_never_chosen_by_auto(cpu_with_bf16):
    auto = HardwareConfig(device=Device.cpu, mixed_precision=MixedPrecision.auto)
    assert runtime.resolve_mixed_precision(auto, "cpu") == "no"
    bf16 = HardwareConfig(device=Device.cpu, mixed_precision=MixedPrecision.bf16)
    assert runtime.resolve_mixed_precision(bf16, "cpu") == "bf16"


def test_cpu_bf16_instructions_read_torch_capabilities(monkeypatch):
    flags = {"avx2": True, "avx512_bf16": False, "amx_bf16": True, "cpu_name": "X"}
    monkeypatch.setattr(torch.cpu, "get_capabilities", lambda: flags)
    assert runtime.cpu_bf16_instructions() == ["amx_bf16"]
    monkeypatch.setattr(torch.cpu, "get_capabilities", lambda: {"avx2": True})
    assert runtime.cpu_bf16_instructions() == []


def test_bf16_autocast_trains_on_cpu(fresh_accelerator_state, cpu_with_bf16):
    from qaexp.modeling import load_model

    cfg = OmegaConf.to_object(compose(["model=tiny"]))
    hardware = HardwareConfig(device=Device.cpu, mixed_precision=MixedPrecision.bf16)
    accelerator = make_accelerator(hardware, TrainerConfig())
    assert accelerator.mixed_precision == "bf16" and accelerator.device.type == "cpu"
    model = accelerator.prepare(load_model(cfg.model))
    dtypes = []
    model.qa_outputs.register_forward_hook(lambda _m, _i, out: dtypes.append(out.dtype))
    ids = torch.randint(1000, 2000, (2, 24))
    out = model(
        input_ids=ids,
        attention_mask=torch.ones_like(ids),
        start_positions=torch.tensor([3, 5]),
        end_positions=torch.tensor([4, 9]),
    )
    assert dtypes == [torch.bfloat16]  # the matmuls ran under bf16 autocast
    assert out.start_logits.dtype == torch.float32  # Accelerate hands back fp32 outputs
    accelerator.backward(out.loss)
    assert torch.isfinite(out.loss) and model.qa_outputs.weight.grad is not None


BF16_RUN = [
    *TINY_RUN,
    "data.synthetic.train_size=48",
    "data.synthetic.eval_size=16",
    "trainer.epochs=1",
    "hardware.mixed_precision=bf16",
]


def test_bf16_run_says_so_and_repeats_its_numbers(tmp_path, cpu_with_bf16):
    """A whole run under CPU bf16 autocast: the run block names it, the same seed gives the
    same losses and scores twice, and they are not fp32's (autocast really ran)."""
    records = {}
    for name, extra in (("one", []), ("two", []), ("fp32", ["hardware.mixed_precision=no"])):
        result = run_cli([*BF16_RUN, *extra, f"hydra.run.dir={name}"], cwd=tmp_path)
        assert result.returncode == 0, result.stderr[-3000:]
        records[name] = read_jsonl(tmp_path / name / "metrics.jsonl")
    log = (tmp_path / "one" / "qaexp.log").read_text()
    assert "precision bf16 (CPU autocast on avx512_bf16)" in log
    assert "precision no" in (tmp_path / "fp32" / "qaexp.log").read_text()

    def numbers(run):
        return [(r["train_loss"], r["exact_match"], r["f1"]) for r in records[run]]

    assert numbers("one") == numbers("two")
    assert records["one"][-1]["train_loss"] != records["fp32"][-1]["train_loss"]


def test_bf16_run_on_a_cpu_without_it_exits_2(tmp_path, cpu_without_bf16):
    result = run_cli([*BF16_RUN, "hydra.run.dir=run"], cwd=tmp_path)
    assert result.returncode == 2
    assert "avx512_bf16 nor amx_bf16" in result.stdout + result.stderr
    assert not (tmp_path / "run" / "metrics.jsonl").exists()


@pytest.mark.slow
def test_compiled_run_trains_and_saves_a_plain_checkpoint(tmp_path):
    """trainer.compile=true end to end. The eager backend runs Dynamo's tracing (graphs, guards,
    the recompile when the batch width changes) without inductor's minutes of code
    generation on a CPU; the checkpoint must not carry torch.compile's `_orig_mod.` prefix."""
    from transformers import AutoModelForQuestionAnswering

    args = [
        *TINY_RUN,
        "data.synthetic.train_size=48",
        "data.synthetic.eval_size=16",
        "trainer.epochs=1",
        "trainer.compile=true",
        "trainer.compile_backend=eager",
        "hydra.run.dir=run",
    ]
    result = run_cli(args, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "torch.compile: backend eager" in (tmp_path / "run" / "qaexp.log").read_text()
    assert [e["epoch"] for e in read_jsonl(tmp_path / "run" / "metrics.jsonl")] == [1]
    _, info = AutoModelForQuestionAnswering.from_pretrained(
        tmp_path / "run" / "checkpoint", output_loading_info=True
    )
    assert not info["missing_keys"] and not info["unexpected_keys"]


def test_optimizer_is_fused_adamw_without_decay_on_biases_and_layernorm():
    from transformers import BertConfig, BertForQuestionAnswering

    from qaexp.config import OptimizerConfig
    from qaexp.training.optimizer import make_optimizer

    model = BertForQuestionAnswering(
        BertConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64)
    )
    optimizer = make_optimizer(model, OptimizerConfig(weight_decay=0.01))
    assert optimizer.defaults["fused"] is True
    names = {id(p): n for n, p in model.named_parameters()}
    decayed, plain = ({names[id(p)] for p in g["params"]} for g in optimizer.param_groups)
    assert optimizer.param_groups[0]["weight_decay"] == 0.01
    assert optimizer.param_groups[1]["weight_decay"] == 0.0
    assert all(not n.endswith("bias") and "LayerNorm" not in n for n in decayed)
    assert any(n.endswith("bias") for n in plain) and any("LayerNorm" in n for n in plain)
    assert decayed | plain == set(names.values())
