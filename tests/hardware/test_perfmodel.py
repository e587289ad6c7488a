"""Roofline model: shapes, memory fit, compute- vs bandwidth-bound regimes, estimates."""

from __future__ import annotations

import json

import pytest

from fleetlm.fleet_toml import load_fleet_toml
from fleetlm.hardware.devices import CATALOG, Device, get_devices
from fleetlm.hardware.perfmodel import (
    NAMED_SHAPES,
    Perf,
    decode_work,
    estimate,
    prefill_work,
    resolve_shape,
    shape_from_config,
)
from fleetlm.hardware.planner import instance_types

L8, L70 = NAMED_SHAPES["Llama-3.1-8B"], NAMED_SHAPES["Llama-3.1-70B"]


def test_named_shapes_have_their_published_sizes():
    assert L8.params / 1e9 == pytest.approx(8.03, abs=0.01)
    assert L70.params / 1e9 == pytest.approx(70.6, abs=0.1)
    assert NAMED_SHAPES["Qwen2.5-7B"].params / 1e9 == pytest.approx(7.6, abs=0.1)
    assert L8.kv_bytes_per_token() == 2 * 32 * 8 * 128 * 2  # K and V, 32 layers, 8 heads of 128, bf16


def test_shape_from_config_json(tmp_path):
    cfg = {"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
           "intermediate_size": 128, "vocab_size": 1000, "tie_word_embeddings": True}
    (tmp_path / "config.json").write_text(json.dumps({"text_config": cfg}))
    s = resolve_shape(str(tmp_path))
    assert (s.head_dim, s.kv_heads, s.tied_embeddings) == (16, 2, True)
    assert s.params == 2 * (2 * 64 * 64 + 2 * 64 * 32 + 3 * 64 * 128) + 1000 * 64
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(ValueError, match="hidden_size"):
        shape_from_config(tmp_path)
    with pytest.raises(ValueError, match="unknown model"):
        resolve_shape("no-such-model")


def test_decode_at_batch_one_is_bandwidth_bound_and_prefill_compute_bound():
    h100 = CATALOG["H100-SXM"]
    perf = Perf(L8, h100, 1)
    weights_s = L8.params * 2 / (h100.mem_bw_gbps * 1e9 * h100.bandwidth_eff)
    assert perf.decode_step(1, 128) == pytest.approx(weights_s + h100.step_overhead_s, rel=0.02)
    flops = 2 * L8.layer_params * 4096
    assert perf.prefill_time(4096) >= flops / (h100.bf16_tflops * 1e12 * h100.compute_eff)
    # decode cost per token falls with batch (weights read once per step), prefill does not
    assert perf.decode_step(64, 128) / 64 < perf.decode_step(1, 128) / 4
    assert perf.prefill_time(8192) == pytest.approx(2 * perf.prefill_time(4096), rel=0.15)
    # tensor parallelism shortens prefill; a faster chip shortens it more
    assert Perf(L8, h100, 2).prefill_time(4096) < perf.prefill_time(4096) < Perf(L8, CATALOG["L4"], 1).prefill_time(4096)


def test_fp32_replica_counts_four_bytes_per_weight_and_kv_element():
    """The engine runs fp32 on a CPU without native bf16; its weights and KV cache take twice
    the bytes, so a bandwidth-bound decode step takes about twice as long."""
    cpu = Device(name="cpu", kind="cpu", bf16_tflops=0.001, fp32_tflops=0.14, mem_bw_gbps=30, mem_gb=24,
                 usd_per_hour=0, max_tp=1, step_overhead_s=0.0)
    b16, f32 = Perf(L8, cpu, 1, dtype="bf16"), Perf(L8, cpu, 1, dtype="fp32")
    assert f32.kv_bytes_per_token() == 2 * b16.kv_bytes_per_token()
    weights_s = L8.params * 4 / (cpu.mem_bw_gbps * 1e9 * cpu.bandwidth_eff)
    assert f32.decode_step(1, 16) == pytest.approx(weights_s, rel=0.01)
    # Compute uses each dtype's own peak: fp32 prefill is ~140x faster than emulated bf16 here.
    assert b16.prefill_time(512) / f32.prefill_time(512) == pytest.approx(140, rel=0.05)
    with pytest.raises(ValueError, match="fp32"):  # a datasheet GPU has no fp32 figure
        Perf(L8, CATALOG["H100-SXM"], 1, dtype="fp32")
    with pytest.raises(ValueError, match="dtype"):
        Perf(L8, cpu, 1, dtype="int4")
    with pytest.raises(ValueError, match="fp32_tflops"):
        Device(name="bad", bf16_tflops=1, fp32_tflops=0, mem_bw_gbps=1, mem_gb=1, usd_per_hour=1)
    # 8B fp32 weights (32 GB) do not fit in the 24 GB CPU; the planner leaves out devices with
    # no fp32 figure instead of failing on them.
    big_cpu = Device(name="big-cpu", kind="cpu", bf16_tflops=0.001, fp32_tflops=0.14, mem_bw_gbps=30,
                     mem_gb=128, usd_per_hour=0, max_tp=1)
    types = instance_types(L8, [cpu, big_cpu, CATALOG["H100-SXM"]], 8192, dtype="fp32")
    assert [t.device.name for t in types] == ["big-cpu"]


def test_memory_fit_tp_and_fp8():
    assert not Perf(L70, CATALOG["H100-SXM"], 1).fits()
    assert Perf(L70, CATALOG["H100-SXM"], 2).fits() and Perf(L70, CATALOG["MI300X"], 1).fits()
    assert not Perf(L70, CATALOG["H200"], 1).fits() and Perf(L70, CATALOG["H200"], 1, dtype="fp8").fits()
    with pytest.raises(ValueError, match="fp8"):
        Perf(L8, CATALOG["A100-80GB"], 1, dtype="fp8")
    with pytest.raises(ValueError, match="tp"):
        Perf(L8, CATALOG["H100-SXM"], 16)
    e = estimate(Perf(L8, CATALOG["L4"], 1), prompt=2000, output=200, batch=8)
    assert e.max_batch == Perf(L8, CATALOG["L4"], 1).kv_capacity_tokens() // 2200
    assert e.usd_per_mtok_output == pytest.approx(0.80 / 3600 / e.output_tok_s * 1e6)
    with pytest.raises(ValueError, match="does not fit"):
        estimate(Perf(L70, CATALOG["L4"], 8), prompt=100_000, output=10, batch=1)
    with pytest.raises(ValueError, match="batch 16 does not fit"):
        estimate(Perf(L70, CATALOG["H100-SXM"], 2), prompt=2048, output=128, batch=16)


def test_step_work_adds_up():
    w = prefill_work(100, 50) + decode_work(3, 10)
    assert (w.tokens, w.sampled, w.seqs) == (103, 4, 4)
    assert w.attn_pairs == 100 * 50 + 100 * 101 / 2 + 30


def test_user_devices_from_fleet_toml(tmp_path):
    path = tmp_path / "fleet.toml"
    path.write_text('[[device]]\nname = "my-gpu"\nbf16_tflops = 100\nmem_bw_gbps = 500\nmem_gb = 32\n'
                    'usd_per_hour = 0.5\nmax_tp = 1\n[[device]]\nname = "L4"\nbf16_tflops = 121\n'
                    'mem_bw_gbps = 300\nmem_gb = 24\nusd_per_hour = 0.4\nmax_tp = 1\n')
    devs = get_devices(user=load_fleet_toml(str(path)).devices)
    assert devs["my-gpu"].mem_gb == 32 and devs["L4"].usd_per_hour == 0.4  # a user price overrides
    path.write_text('[[device]]\nname = "x"\nbf16_tflops = 1\nmem_bw_gbps = 1\nmem_gb = 1\nusd_per_hour = 1\n'
                    'max_tp = 1\nflops = 3\n')
    with pytest.raises(ValueError, match="Unknown device key"):
        load_fleet_toml(str(path))
    with pytest.raises(ValueError, match="must be > 0"):
        Device(name="bad", bf16_tflops=0, mem_bw_gbps=1, mem_gb=1, usd_per_hour=1)
