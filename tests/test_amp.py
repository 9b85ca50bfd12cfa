"""vitrieval.amp: the one mixed-precision policy of training, extraction and index builds (no GPU needed)."""

from __future__ import annotations

import pytest
import torch

import vitrieval.amp as amp
from vitrieval.amp import amp_dtype, amp_mode, autocast_context

CPU, CUDA = torch.device("cpu"), torch.device("cuda")


@pytest.fixture(params=[True, False], ids=["native-bf16", "emulated-bf16"])
def bf16_hardware(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> bool:
    """The CPU's native bf16 kernels and the GPU's bf16 support, both mocked to ``request.param``."""
    monkeypatch.setattr(amp, "cpu_has_native_bf16", lambda: request.param)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: request.param)
    return request.param


def test_auto_follows_the_hardware_in_training_and_extraction(bf16_hardware: bool) -> None:
    assert amp_mode(CPU, "auto") == amp_mode(CPU, None) == amp_mode(CUDA, "auto") == "auto"
    assert amp_dtype(CPU, amp_mode(CPU, "auto")) == (torch.bfloat16 if bf16_hardware else None)
    assert amp_dtype(CUDA, amp_mode(CUDA, "auto")) == (torch.bfloat16 if bf16_hardware else torch.float16)


def test_an_index_records_off_for_auto_on_every_cpu_and_auto_on_a_gpu(bf16_hardware: bool) -> None:
    assert amp_mode(CPU, "auto", for_index=True) == amp_mode(CPU, None, for_index=True) == "off"
    assert amp_mode("cpu", "auto", for_index=True) == "off"
    assert amp_dtype(CPU, amp_mode(CPU, "auto", for_index=True)) is None  # float32 even with native bf16
    assert amp_mode(CUDA, "auto", for_index=True) == amp_mode("cuda:1", None, for_index=True) == "auto"


@pytest.mark.parametrize("for_index", [False, True])
def test_explicit_modes_are_kept_as_asked(for_index: bool, bf16_hardware: bool) -> None:
    for device in (CPU, CUDA):
        for mode in ("bf16", "fp16", "off"):
            assert amp_mode(device, mode, for_index=for_index) == mode
        assert amp_dtype(device, "bf16") == torch.bfloat16 and amp_dtype(device, "off") is None
    assert amp_dtype(CUDA, "fp16") == torch.float16


def test_unsupported_and_unknown_modes_are_errors() -> None:
    with pytest.raises(ValueError, match="fp16 autocast needs a CUDA device"):
        amp_dtype(CPU, "fp16")
    with pytest.raises(ValueError, match="amp must be auto, bf16, fp16 or off; got 'fp32'"):
        amp_dtype(CPU, "fp32")


def test_autocast_context_applies_the_policy(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(amp, "cpu_has_native_bf16", lambda: False)
    for mode in ("auto", None, "off"):
        with autocast_context(CPU, mode):
            assert not torch.is_autocast_enabled("cpu")
    with autocast_context(CPU, "bf16"):
        assert torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.bfloat16
    monkeypatch.setattr(amp, "cpu_has_native_bf16", lambda: True)
    with autocast_context(CPU, "auto"):
        assert torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.bfloat16


@pytest.mark.parametrize("name", ["auto", "cpu", "cuda", "cuda:0", "cuda:12"])
def test_check_device_takes_the_device_names(name: str) -> None:
    from vitrieval.amp import check_device

    assert check_device(name) == name


@pytest.mark.parametrize("name", ["gpu", "cuda:", "cuda:x", "CPU", "", "cuda:0,1"])
def test_check_device_refuses_anything_else_naming_the_choices(name: str) -> None:
    from vitrieval.amp import check_device

    with pytest.raises(ValueError, match=r"auto, cpu, cuda, cuda:N") as err:
        check_device(name)
    assert len(str(err.value).splitlines()) == 1 and repr(name) in str(err.value)


def test_resolve_device_refuses_what_this_machine_lacks(monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    from vitrieval.amp import resolve_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ValueError, match="CUDA is not available"):
        resolve_device("cuda:1")
    assert resolve_device("auto") == torch.device("cpu")
