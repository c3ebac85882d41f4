"""`liquid-drones study`: spec validation, failed runs, resuming, stop at target, local == Ray."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import yaml

from agents.cli import main as cli
from agents.config import load_config
from agents.run import read_eval_rows
from agents.study import run_study
from agents.study_spec import StudyError, available_studies, load_spec
from agents.train import train

TINY = ["train.stop_at_success=null", "env.n_envs=2", "env.vec_env=dummy", "env.kwargs={episode_seconds: 1.0}", "policy.net_arch=[8]",
        "algo.n_steps=64", "algo.batch_size=64", "algo.n_epochs=1", "train.total_timesteps=256",
        "eval.freq=128", "eval.n_episodes=2", "eval.final_episodes=0", "checkpoint.freq=128",
        "policy.core_kwargs={hidden_size: 8}"]


def write_spec(path: Path, **changes) -> Path:
    spec = {"base": "hover", "set": TINY, "grid": {"policy.core": ["gru", "mlp"]}, "seeds": 2,
            "stress": {"axes": ["wind", "mass"], "levels": {"wind": [0, 2], "mass": [1.0, 1.3]}, "episodes": 2},
            "reference": "gru", "learned_level": 0.5}
    spec.update(changes)
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


@pytest.mark.parametrize("change, message", [
    ({"grdi": {}}, "unknown key 'grdi'"),
    ({"reference": "lstm"}, "reference 'lstm' is not a variant; variants: gru, mlp"),
    ({"grid": {"policy.core": ["gru", "transformer"]}}, "variant transformer"),
    ({"stress": {"axes": ["gale"]}}, "unknown axis 'gale'"),
    ({"stress": {"episodes": 0}}, "stress.episodes must be an integer >= 1"),
    ({"grid": {"env.kwargs.disturbances": [{}, {"mass": [0.8, 1.2]}]}}, "needs a name"),
    ({"training": {"stop_at_succes": 0.9}}, "train.stop_at_succes"),
    ({"grid": {"policy.core": ["gru"], "training": ["rl", "bc"]}}, "unknown training method 'bc'; allowed: rl, imitate"),
    ({"grid": {"config": {"tuned": "no/such/best.yaml"}}, "reference": "tuned"},
     "no/such/best.yaml does not exist"),
])
def test_a_bad_spec_stops_naming_the_key_before_any_work(tmp_path, change, message):
    with pytest.raises(StudyError, match=message.replace("(", r"\(").replace("[", r"\[")):
        load_spec(str(write_spec(tmp_path / "s.yaml", **change)))


def test_shipped_specs_name_their_variants_and_the_reference():
    assert {"hover-cores", "hover-cores-quick", "hover-dr", "hover-imitation"} <= set(available_studies())
    imitation = load_spec("hover-imitation")
    assert [(v.name, v.method) for v in imitation.variants] == [("ncp-cfc+rl", "rl"), ("ncp-cfc+imitate", "imitate")]
    dr = load_spec("hover-dr")
    assert [v.name for v in dr.variants][:2] == ["ncp-cfc+nominal", "ncp-cfc+dr"] and dr.reference == "lstm+nominal"
    cores = load_spec("hover-cores")
    assert {v.name for v in cores.variants} >= {"ncp-cfc", "cfc", "ncp-ltc", "lstm", "mlp"} and len(cores.seeds) == 5
    quick = load_spec("hover-cores-quick")  # the same study, three of its cores
    assert [v.name for v in quick.variants] == ["ncp-cfc", "cfc", "lstm"] and len(quick.seeds) == 5
    same = ("base", "set", "seeds", "axes", "levels", "episodes", "episode_seed", "reference", "learned_level")
    assert all(quick.to_dict()[key] == cores.to_dict()[key] for key in same)


def test_a_run_that_raises_is_retried_once_and_reported_while_the_rest_complete_then_resume_reuses(tmp_path):
    spec = load_spec(str(write_spec(tmp_path / "s.yaml", grid={"policy.core": ["mlp"], "algo.learning_rate":
                                                               {"ok": 3e-4, "blowup": 1e12}},
                                    seeds=[0], reference="mlp+ok")))
    first = run_study(spec, tmp_path / "study", workers=1, backend="serial", resamples=200, log=lambda _: None)
    assert first.trained == ["mlp+ok/seed-0", "mlp+blowup/seed-0", "mlp+blowup/seed-0"]  # one retry
    assert list(first.failed) == ["mlp+blowup/seed-0"] and "ValueError" in first.failed["mlp+blowup/seed-0"]
    with (tmp_path / "study" / "runs.csv").open() as handle:
        assert {r["variant"]: r["status"] for r in csv.DictReader(handle)} == {"mlp+ok": "finished",
                                                                              "mlp+blowup": "failed"}
    assert "mlp+blowup/seed-0" in (tmp_path / "study" / "report.md").read_text() or \
        json.loads((tmp_path / "study" / "study.json").read_text())["settings"]["failed_runs"]
    again = run_study(spec, tmp_path / "study", workers=1, backend="serial", resamples=200, log=lambda _: None)
    assert again.reused == ["mlp+ok/seed-0"]
    assert again.trained == ["mlp+blowup/seed-0", "mlp+blowup/seed-0"]


def test_a_tiny_study_gives_equal_results_on_the_local_pool_and_on_ray(tmp_path):
    spec = load_spec(str(write_spec(tmp_path / "s.yaml")))
    summaries = {}
    for backend in ("local", "ray"):
        result = run_study(spec, tmp_path / backend, workers=2, backend=backend, resamples=200, log=lambda _: None)
        assert sorted(result.trained) == ["gru/seed-0", "gru/seed-1", "mlp/seed-0", "mlp/seed-1"]
        for name in ("study.json", "report.md", "robustness.png", "graded.png", "learning_curves.png", "runs.csv"):
            assert (tmp_path / backend / name).is_file(), name
        summaries[backend] = json.loads((tmp_path / backend / "study.json").read_text())
    for backend in summaries:  # wall times differ; every result must not
        for variant in summaries[backend]["variants"].values():
            variant.pop("minutes_to_target", None)
            for run in variant.get("runs", {}).values() if isinstance(variant.get("runs"), dict) else variant.get("runs", []):
                run.pop("minutes_to_target", None)
        summaries[backend].pop("curves", None)
        summaries[backend]["settings"].pop("study", None)
    assert summaries["local"]["variants"] == summaries["ray"]["variants"]
    assert summaries["local"]["differences"] == summaries["ray"]["differences"]
    rows = {b: sorted(csv.DictReader((tmp_path / b / "stress" / "episodes.csv").open()), key=lambda r: tuple(r.values()))
            for b in summaries}
    assert rows["local"] == rows["ray"]


def test_stop_at_target_stops_at_the_first_evaluation_at_the_level_with_a_complete_run_folder(tmp_path):
    config = load_config("hover-mlp", [*TINY[:-1], "train.total_timesteps=2048", "train.stop_at_success=0.0"])
    result = train(config, tmp_path / "run", log=lambda _: None)
    rows = read_eval_rows(tmp_path / "run" / "eval.csv")
    assert [int(r["timesteps"]) for r in rows] == [128]
    assert result.timesteps < 2048
    final = json.loads((tmp_path / "run" / "final_eval.json").read_text())
    assert final["target_reached_at"] == 128
    for name in ("config.yaml", "model.zip", "normalization.json", "training_curve.png"):
        assert (tmp_path / "run" / name).is_file(), name


def test_the_study_cli_stops_on_a_bad_spec_before_creating_anything(tmp_path):
    with pytest.raises(SystemExit) as stop:
        cli(["study", str(write_spec(tmp_path / "s.yaml", reference="nope")), "--root", str(tmp_path / "runs")])
    assert "reference 'nope'" in str(stop.value.code) and not (tmp_path / "runs").exists()


def test_a_study_with_a_tune_stage_tunes_each_variant_with_the_same_effort_and_trains_the_best(tmp_path):
    spec = load_spec(str(write_spec(tmp_path / "s.yaml", grid={"policy.core": ["mlp"]}, seeds=[0], reference="mlp",
                                    tune={"trials": 2, "budget": 256}, set=[*TINY, "env.n_envs=8"],
                                    stress={"axes": ["mass"], "levels": {"mass": [1.0, 1.3]}, "episodes": 1})))
    result = run_study(spec, tmp_path / "study", workers=1, backend="serial", resamples=200, log=lambda _: None)
    tuned = result.summary["settings"]["tuning"]
    assert tuned["trials"] == 2 and tuned["budget"] == 256 and tuned["best"]["mlp"]
    assert (tmp_path / "study" / "tune" / "mlp" / "trials.csv").is_file()
    trained = load_config(str(tmp_path / "study" / "runs" / "mlp" / "seed-0" / "config.yaml"))
    best = load_config(str(tmp_path / "study" / "tune" / "mlp" / "best.yaml"))
    assert trained.algo == best.algo  # the seeds trained the tuned keys
    assert "tuned first with the same effort: 2 trials of 256 env steps" in (tmp_path / "study" / "report.md").read_text()


IMITATE_TINY = ["imitation.demo_episodes=4", "imitation.heldout_episodes=1", "imitation.epochs=2",
                "imitation.dagger_rounds=1", "imitation.episodes_per_round=2", "imitation.eval_every=0"]


def test_grid_training_imitates_a_variant_and_its_runs_join_the_paired_stress_test(tmp_path):
    spec = load_spec(str(write_spec(tmp_path / "s.yaml", grid={"policy.core": ["gru"], "training": ["rl", "imitate"]},
                                    seeds=[0], reference="gru+rl", set=[*TINY, *IMITATE_TINY],
                                    stress={"axes": ["mass"], "levels": {"mass": [1.0, 1.3]}, "episodes": 2})))
    assert [(v.name, v.method) for v in spec.variants] == [("gru+rl", "rl"), ("gru+imitate", "imitate")]
    assert all(not any(o.startswith("training") for o in v.overrides) for v in spec.variants)
    result = run_study(spec, tmp_path / "study", workers=1, backend="serial", resamples=200, log=lambda _: None)
    assert sorted(result.trained) == ["gru+imitate/seed-0", "gru+rl/seed-0"] and not result.failed
    runs = tmp_path / "study" / "runs"
    assert (runs / "gru+imitate" / "seed-0" / "tb" / "imitate").is_dir()
    assert not (runs / "gru+rl" / "seed-0" / "tb" / "imitate").exists()
    episodes = list(csv.DictReader((tmp_path / "study" / "stress" / "episodes.csv").open()))
    assert {r["agent"] for r in episodes} == {"gru+rl/seed-0", "gru+imitate/seed-0"}
    assert set(json.loads((tmp_path / "study" / "study.json").read_text())["variants"]) == {"gru+rl", "gru+imitate"}
    assert json.loads((tmp_path / "study" / "spec.json").read_text())["training"] == {"gru+imitate": "imitate"}


def test_grid_config_gives_each_variant_its_own_base_config_with_the_spec_overrides(tmp_path):
    tuned = tmp_path / "best.yaml"
    tuned.write_text(yaml.safe_dump({**load_config("hover-gru").to_dict(), "algo": {
        **load_config("hover-gru").to_dict()["algo"], "learning_rate": 1.5e-3}}))
    spec = load_spec(str(write_spec(tmp_path / "s.yaml", grid={"config": {"shipped": "hover-gru", "tuned": str(tuned)}},
                                    reference="shipped")))
    assert [(v.name, v.base) for v in spec.variants] == [("shipped", "hover-gru"), ("tuned", str(tuned))]
    shipped, best = (spec.config(v, 1) for v in spec.variants)
    assert (shipped.algo.learning_rate, best.algo.learning_rate) == (5e-4, 1.5e-3)
    assert shipped.policy.core == best.policy.core == "gru" and shipped.train.seed == best.train.seed == 1
    assert shipped.algo.n_steps == best.algo.n_steps == 64  # the spec's set applies to both
    assert spec.to_dict()["configs"] == {"shipped": "hover-gru", "tuned": str(tuned)}
