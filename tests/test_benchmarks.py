"""The benchmark scripts run (CI-sized) and report what they promise. No speed is asserted here:
the figures are for people to read (README, Performance)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import transformers

ROOT = Path(__file__).resolve().parents[1]


def run(script: str, *args: str, artifacts: Path, name: str) -> dict:
    out = artifacts / name
    done = subprocess.run([sys.executable, f"benchmarks/{script}", *args, "--json", str(out)], cwd=ROOT,
                          capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    (artifacts / name.replace(".json", ".txt")).write_text(done.stdout)
    return json.loads(out.read_text())


def test_generation_benchmark_compares_three_loops_and_understanding(artifacts):
    figures = run("bench_generation.py", "--arch", "tiny", "--num-images", "2", "--repeats", "1",
                  "--understanding", "--new-tokens", "8", artifacts=artifacts, name="bench-generation-tiny.json")
    images = figures["images"]
    for name in ("engine", "transformers", "official"):
        assert images[name]["seconds_per_image"] > 0 and images[name]["peak_memory_mb"] > 0
    assert images["engine"]["first_preview_s"] is not None and images["transformers"]["first_preview_s"] is None
    assert {"speedup_vs_transformers", "speedup_vs_official", "preview_cost_fraction"} <= images["engine"].keys()
    assert images["engine"]["step_ms"] > 0 and 0 < images["engine"]["cfg_1_over_cfg"]
    assert images["greedy_tokens_equal_transformers"] is True
    for name in ("engine", "transformers"):
        understanding = figures["understanding"][name]
        assert understanding["prefill_tokens_per_s"] > 0 and understanding["decode_tokens_per_s"] > 0
    assert ("bandwidth_floor" in images) == (figures["device"].startswith("cuda"))


def test_cfg_one_is_benchmarked_against_itself(artifacts):
    figures = run("bench_generation.py", "--arch", "tiny", "--num-images", "1", "--repeats", "1", "--cfg-scale", "1",
                  artifacts=artifacts, name="bench-generation-tiny-cfg1.json")
    assert figures["images"]["engine"]["seconds"] > 0
    assert "skipped" in figures["images"]["transformers"]  # it crashes without CFG


def test_users_benchmark_compares_images_both_ways(artifacts):
    figures = run("bench_users.py", "--arch", "tiny", "--users", "1", "2", artifacts=artifacts,
                  name="bench-users-tiny.json")
    assert [r["users"] for r in figures["runs"]] == [1, 2]
    assert figures["runs"][0]["identical_users"] == 1  # alone in the "shared" loop: the same loop
    assert all(0 < r["token_agreement"] <= 1 and r["throughput_ratio"] > 0 for r in figures["runs"])


def test_compare_benchmark_times_the_grid_against_one_by_one_and_a_batch(artifacts):
    figures = run("bench_compare.py", "--arch", "tiny", "--cfg", "1", "5", "--temperature", "0", "1",
                  artifacts=artifacts, name="bench-compare-tiny.json")
    assert figures["cells"] == 4 and figures["cells_identical_to_alone"] == 4
    assert min(figures["one_by_one_s"], figures["grid_s"], figures["plain_batch_s"]) > 0
    assert figures["grid_vs_one_by_one"] > 0 and figures["grid_vs_plain_batch"] > 0


def test_cpu_parts_benchmark_times_every_part_per_setting(artifacts):
    figures = run("bench_cpu_parts.py", "--arch", "tiny", "--threads", "1", "2", "--dtypes", "fp32", "--repeats", "1",
                  "--prefill", "16", artifacts=artifacts, name="bench-cpu-parts-tiny.json")
    parts = {row["part"] for row in figures["figures"]}
    assert parts == {"llm step, 2 rows", "llm step, 8 rows", "llm prefill, 16 tokens", "vision, 1 image",
                     "vq decode, 1 image", "vq decode, 1 image (unscaled)"}
    assert {(row["threads"], row["dtype"]) for row in figures["figures"]} == {(1, "fp32"), (2, "fp32")}
    assert all(row["seconds"] > 0 for row in figures["figures"])


def test_quantize_benchmark_times_every_mode_on_the_same_weights(artifacts):
    figures = run("bench_quantize.py", "--arch", "tiny", "--repeats", "1", "--prefill", "8", "--steps", "12",
                  artifacts=artifacts, name="bench-quantize-tiny.json")
    rows = {row["quantize"]: row for row in figures["figures"]}
    assert list(rows) == ["none", "int8", "nf4"]
    assert rows["nf4"]["llm_layer_weights_mb"] < rows["int8"]["llm_layer_weights_mb"] < rows["none"]["llm_layer_weights_mb"]
    assert all(row["step_s"] > 0 and row["prefill_s"] > 0 for row in rows.values())
    assert rows["none"]["tokens_part_at_step"] is None  # the baseline against itself


@pytest.mark.timeout(1800)
def test_gpu_check_dry_run_runs_without_gradio_or_spaces(artifacts):
    """The prepared GPU proof runs the same code on the CPU, so it cannot rot before a GPU comes;
    gradio and spaces are made unimportable, as on the GPU machine."""
    out = artifacts / "gpu-check-dry-run.json"
    code = ("import runpy, sys; sys.modules.update(gradio=None, spaces=None); sys.path.insert(0, 'benchmarks'); "
            f"sys.argv = ['gpu_check.py', '--dry-run', '--out', {str(out)!r}]; "
            "runpy.run_path('benchmarks/gpu_check.py', run_name='__main__')")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=1800)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    (artifacts / "gpu-check-dry-run.txt").write_text(done.stdout)
    figures = json.loads(out.read_text())
    assert figures["versions"]["transformers"] == transformers.__version__
    tiny = figures["models"]["tiny"]
    for name in ("engine_graph", "engine_eager", "official", "transformers"):
        row = tiny["speed"][name]["1"]
        assert row.get("s_per_image", 0) > 0 or "unavailable" in row, (name, row)  # transformers 5.17 cannot draw
    assert tiny["speed"]["engine_graph"]["1"]["graphs_used"] is False  # no CUDA here
    assert tiny["greedy"]["graph_vs_eager"] == {"equal": True, "share_equal": 1.0}
    assert tiny["chat"]["engine"]["decode_tokens_per_s"] > 0
    determinism = tiny["determinism"]
    same = {"tokens_equal": True, "first_token_step": None, "keys_equal": True, "first_key_step": None, "first_layer": None}
    for pair in ("graph_twice", "graph_settled_twice", "eager_twice", "eager_math_twice", "graph_vs_eager"):
        assert determinism[pair] == same, pair  # the CPU repeats itself bitwise, plain attention too
    one_image = {"images_identical": "1/1", "first_differing_step": [None]}
    assert determinism["request_graph_twice"] == determinism["request_eager_twice"] == one_image
    assert tiny["seeds"]["noise_equal_to_cpu"] and tiny["seeds"]["same_request_twice"]["images_identical"] == "4/4"
    for card in (tiny["cards_bf16"]["12GB"], tiny["nf4"]["cards"]["12GB"]):
        assert card["images_per_loop"]["cfg5"] == 1 and card["plans"]["2@cfg5"] == [1, 1]
        assert card["runs"]["2"] == {**card["runs"]["2"], "finished": True, "chunks": 2}
        assert card["runs"]["1"]["finished"] and card["runs"]["1"]["chunks"] == 1
    assert tiny["nf4"]["speed"]["engine_graph"]["1"]["s_per_image"] > 0


def test_gpu_check_finds_the_first_step_and_layer_where_two_runs_part(engine, monkeypatch):
    """The determinism section's reading of a GPU run rests on this: a key that differs by one bit
    is found at its step and layer, a prompt slot is called "prefill", and tokens are told apart."""
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    import gpu_check

    run = gpu_check.fingerprint(engine, graph=False, settle=False, math_attention=False, steps=30)
    assert gpu_check.first_difference(run, run)["keys_equal"]
    layers, prompt = run["keys"].shape[0], run["prompt_slots"]

    def planted(layer: int, slot: int) -> dict:
        keys = run["keys"].clone()
        keys[layer, 0, 0, slot, 0] ^= 1  # one bit of one byte
        return {**run, "keys": keys}

    step_seven = gpu_check.first_difference(run, planted(layers - 1, prompt + 6))
    assert step_seven == {"tokens_equal": True, "first_token_step": None, "keys_equal": False,
                          "first_key_step": 7, "first_layer": layers - 1}
    earlier = planted(layers - 1, prompt + 6)
    earlier["keys"][1, 0, 0, prompt + 2, 5] ^= 4
    assert gpu_check.first_difference(run, earlier)["first_key_step"] == 3
    assert gpu_check.first_difference(run, earlier)["first_layer"] == 1
    assert gpu_check.first_difference(run, planted(0, 0))["first_key_step"] == "prefill"
    other_tokens = {**run, "tokens": run["tokens"].clone()}
    other_tokens["tokens"][0, 12] += 1
    assert gpu_check.first_difference(run, other_tokens)["first_token_step"] == 12
