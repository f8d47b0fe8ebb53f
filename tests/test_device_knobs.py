"""set_num_sms / get_num_sms / set_tc_util / get_tc_util: values, defaults, errors."""

import pytest
import torch

import dg_moe
from dg_moe import device


@pytest.fixture(autouse=True)
def _restore_knobs(monkeypatch):
    monkeypatch.setattr(device, "_num_sms", None)
    monkeypatch.setattr(device, "_tc_util", 100)


def test_tc_util_default_and_set():
    assert dg_moe.get_tc_util() == 100
    dg_moe.set_tc_util(75)
    assert dg_moe.get_tc_util() == 75


@pytest.mark.parametrize("bad", [0, 101, -5, 50.0, True, "90"])
def test_tc_util_rejects(bad):
    with pytest.raises(ValueError, match="tc_util"):
        dg_moe.set_tc_util(bad)


def test_num_sms_set_and_get():
    dg_moe.set_num_sms(120)
    assert dg_moe.get_num_sms() == 120


@pytest.mark.parametrize("bad", [0, -1, 1.5, True, None])
def test_num_sms_rejects(bad):
    with pytest.raises(ValueError, match="num_sms"):
        dg_moe.set_num_sms(bad)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message given when no GPU is visible")
def test_num_sms_without_gpu_says_how_to_set_it():
    with pytest.raises(RuntimeError, match="set_num_sms"):
        dg_moe.get_num_sms()
