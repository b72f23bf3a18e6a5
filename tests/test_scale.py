"""Running at scale, on CPU: a 2-process DDP retrain (gloo), the grid on worker processes, on Ray.

See docs/scale.md. Everything here is CPU-only and tiny (8 px digits, one epoch, a few batches).
"""

import json
import logging
import os
import signal
import sqlite3
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import torch
import yaml
from lightning.pytorch import Callback

from roar.__main__ import main as roar_main
from roar.benchmark.config import BenchmarkConfig
from roar.benchmark.launchers import LaunchOptions
from roar.benchmark.ray_launcher import ray_resources
from roar.benchmark.results import ResultsStore
from roar.benchmark.runner import config_from_dict, pending_runs, run_benchmark

ROOT = Path(__file__).resolve().parents[1]
DEMO = str(ROOT / "configs/benchmark/digits_demo.yaml")

# 3 runs: the unmasked reference, random ROAR and random KAR at 0.5
TINY_GRID = [
    "--config", DEMO, "--data.image_size", "8", "--trainer.max_epochs", "1", "--trainer.limit_train_batches", "4",
    "--benchmark.base.max_epochs", "1", "--benchmark.methods", "[random]", "--benchmark.thresholds", "[0.5]", "--benchmark.seeds", "1", "--benchmark.modes", "[roar, kar]",
    "--benchmark.noretrain", "false", "--benchmark.logger", "none", "--progress", "false", "--benchmark.base.min_accuracy", "0",
]  # fmt: skip
KILLED = "roar/random/t0.500/s0/digits/small_cnn"
KILLED_FOLDER = "runs/roar/random/t0.500-s0"


def killing(tmp_path) -> dict:
    """A trainer callback (tests/plugins.py) that kills the process running KILLED, once."""
    return {"class_path": "plugins.KillOnce", "init_args": {"run": KILLED_FOLDER, "marker_dir": str(tmp_path)}}


def tiny_config(**overrides) -> BenchmarkConfig:
    kwargs = dict(
        name="tiny", data={"source": "digits", "image_size": 8, "batch_size": 64}, model={"arch": "small_cnn"},
        trainer={"max_epochs": 1, "limit_train_batches": 4, "accelerator": "cpu"}, methods=["random"], thresholds=[0.5],
        seeds=1, modes=["roar", "kar"], noretrain=False, logger="none",
    )  # fmt: skip
    kwargs.update(overrides)
    cfg = BenchmarkConfig(**kwargs)
    cfg.base.max_epochs = 1
    cfg.base.min_accuracy = 0.0  # 4 batches leave the base model near chance; these tests are about scale
    return cfg


def check_db(db: Path) -> list[dict]:
    """The database is intact and holds each run id at most once."""
    with sqlite3.connect(db) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        ids = [row[0] for row in conn.execute("SELECT run_id FROM runs")]
    assert len(ids) == len(set(ids))
    return ResultsStore(db).rows()


# --------------------------------------------------------------------------- options
def test_config_round_trips_through_a_dict():
    cfg = tiny_config(method_params={"random": {}}, seeds=[3, 4])
    cfg.protocol.granularity = "pixel"
    assert config_from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg


@pytest.mark.parametrize(
    "options,message",
    [
        (LaunchOptions(workers=0), "workers must be a positive integer"),
        (LaunchOptions(launcher="slurm"), "unknown launcher 'slurm'; valid: local, ray"),
        (LaunchOptions(launcher="ray", workers=2), "for the local launcher"),
        (LaunchOptions(worker_retries=-1), "worker_retries"),
        (LaunchOptions(ray_cpus_per_task=0), "ray_cpus_per_task"),
    ],
)
def test_bad_launch_options_are_refused(options, message):
    with pytest.raises(ValueError, match=message):
        options.validate()


def test_ray_tasks_ask_for_one_gpu_on_gpus_and_refuse_a_cluster_without_them():
    cpu_cluster, gpu_cluster = {"CPU": 8.0}, {"CPU": 32.0, "GPU": 4.0}
    options = LaunchOptions(launcher="ray", ray_cpus_per_task=2)
    assert ray_resources(tiny_config(), options, cpu_cluster) == {"num_cpus": 2.0, "num_gpus": 0.0}
    gpu = tiny_config(trainer={"accelerator": "gpu"})
    assert ray_resources(gpu, options, gpu_cluster) == {"num_cpus": 2.0, "num_gpus": 1.0}
    assert ray_resources(tiny_config(trainer={}), options, gpu_cluster)["num_gpus"] == 1.0  # accelerator auto
    with pytest.raises(ValueError, match="has 0 GPU"):
        ray_resources(gpu, options, cpu_cluster)
    with pytest.raises(ValueError, match="has 8 CPUs"):
        ray_resources(tiny_config(), LaunchOptions(launcher="ray", ray_cpus_per_task=16), cpu_cluster)


def test_ray_launcher_without_ray_says_how_to_install_it(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` now raises ImportError, as where it is not installed
    assert roar_main(["benchmark", *TINY_GRID, "--launcher", "ray", "--ray-address", "auto", "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "pip install '.[ray]'" in err and "roar[ray]" not in err, "PyPI's roar is another project"
    assert err.startswith("error: the ray launcher needs Ray") and err.count("\n") == 1, f"one line, not a usage message: {err!r}"
    assert not (tmp_path / "out").exists(), "it must fail before any training, and before writing the folder"


def test_ray_address_auto_without_a_cluster_is_refused_before_the_base_model(tmp_path, monkeypatch, capsys):
    # --ray-address auto joins the cluster `ray start` made on this node; with none, Ray's ConnectionError
    # came as a traceback from the first submission, after the base model and the ranks
    pytest.importorskip("ray")
    if (Path(tempfile.gettempdir()) / "ray" / "ray_current_cluster").exists():
        pytest.skip("a Ray cluster is running on this machine")
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    assert roar_main(["benchmark", *TINY_GRID, "--launcher", "ray", "--ray-address", "auto", "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "error: --ray-address auto: no Ray cluster to join" in err and "ray start --head" in err and "Traceback" not in err
    assert not (tmp_path / "out").exists(), "it must fail before any training, and before writing the folder"


# --------------------------------------------------------------------------- worker processes
def test_workers_run_the_grid_once_each_and_a_killed_worker_loses_only_its_run(tmp_path, capsys):
    out = tmp_path / "grid"
    # The worker running KILLED dies (os._exit) at the end of its training, before recording it;
    # no retries for worker deaths, so the grid exits 1 naming the failed run.
    cfg = tiny_config()
    cfg.trainer["callbacks"] = [killing(tmp_path)]
    run_benchmark(cfg, out, progress=False, launch=LaunchOptions(workers=2, worker_retries=0))
    assert list(tmp_path.glob("killed-*")), "the callback killed a worker"
    rows = check_db(out / "results.db")
    assert len(rows) == 3
    status = {r["run_id"]: r["status"] for r in rows}
    assert status.pop(KILLED) == "failed" and set(status.values()) == {"done"}
    (failed,) = ResultsStore(out / "results.db").failures()
    assert "worker process" in failed["error"] and "died" in failed["error"]
    assert failed["error"].endswith("run the benchmark again to retry it")  # no retries left: the rerun is the user's
    # every finished run is complete (its config recorded), whichever worker wrote it
    assert all(r["config"]["benchmark"]["name"] == "tiny" and 0 <= r["test_acc"] <= 1 and r["fingerprint"] for r in rows if r["status"] == "done")
    before = {r["run_id"]: r["seconds"] for r in rows if r["status"] == "done"}

    # Resume (in this process): only the failed run is redone, the others are untouched.
    run_benchmark(cfg, out, progress=False)
    rows = check_db(out / "results.db")
    assert len(rows) == 3 and all(r["status"] == "done" for r in rows)
    assert {k: v for k, v in ((r["run_id"], r["seconds"]) for r in rows) if k in before} == before
    assert (out / "results.csv").is_file() and (out / "summary.csv").is_file()

    # A finished grid starts no workers: --workers auto has no count to print (it said "1 run(s) to do").
    capsys.readouterr()
    run_benchmark(cfg, out, progress=False, launch=LaunchOptions(workers="auto"))
    printed = capsys.readouterr().out
    assert "resuming: 3 of 3 runs" in printed and "--workers auto" not in printed, printed


@pytest.mark.slow
def test_a_killed_worker_is_retried_in_a_fresh_process(tmp_path, caplog):
    cfg = tiny_config(seeds=2)
    cfg.trainer["callbacks"] = [killing(tmp_path)]
    with caplog.at_level(logging.WARNING, logger="roar.benchmark.local_pool"):
        results = run_benchmark(cfg, tmp_path / "out", progress=False, report=False, launch=LaunchOptions(workers=2))
    assert list(tmp_path.glob("killed-*")), "the callback killed a worker"
    # the line says the driver retries it, and not also to run the benchmark again (it said both)
    (line,) = [r.getMessage() for r in caplog.records if "died" in r.getMessage()]
    assert line.endswith("retrying it in a fresh worker (1 of 1)") and "run the benchmark again" not in line, line
    rows = check_db(results.path)
    plan, todo = pending_runs(cfg, results)
    assert not todo and len(rows) == len(plan) == 6
    assert all(r["status"] == "done" for r in rows)


# --------------------------------------------------------------------------- Ray
@pytest.mark.slow
def test_ray_runs_the_grid_end_to_end_and_retries_a_dead_task(tmp_path, monkeypatch):
    pytest.importorskip("ray")
    # Ray's workers inherit the environment, not pytest's sys.path: they import tests/plugins.py through it
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(ROOT / "tests"), os.environ.get("PYTHONPATH")])))
    out = tmp_path / "ray"
    cfg = tiny_config()
    cfg.trainer["callbacks"] = [killing(tmp_path)]  # Ray's max_retries reruns the task whose worker died
    run_benchmark(cfg, out, progress=False, launch=LaunchOptions(launcher="ray", ray_address="local"))
    assert list(tmp_path.glob("killed-*")), "the callback killed a Ray worker"
    rows = check_db(out / "results.db")
    assert len(rows) == 3 and all(r["status"] == "done" for r in rows)
    assert (out / "roar.png").is_file() and (out / "kar.png").is_file()
    # resume: every run id is done, nothing is submitted again
    before = {r["run_id"]: r["seconds"] for r in rows}
    run_benchmark(cfg, out, progress=False, launch=LaunchOptions(launcher="ray", ray_address="local"))
    assert {r["run_id"]: r["seconds"] for r in check_db(out / "results.db")} == before


# --------------------------------------------------------------------------- DDP
class MaskProbe(Callback):
    """Test-only callback: what one DDP rank masked, trained on and found in the store, saved per rank.

    Built by the LightningCLI in every rank's process (``class_path: test_scale.MaskProbe``). It also
    captures this process's attribution-store log, which says when ranks were computed.
    """

    FIXED = 16  # fixed train-pool indices 0..15 and the first 8 test samples

    def __init__(self, out: str) -> None:
        self.out = Path(out)
        self.out.mkdir(parents=True, exist_ok=True)
        self.batches: list[tuple[torch.Tensor, torch.Tensor]] = []
        store_log = logging.getLogger("roar.attribution.store")
        store_log.setLevel(logging.INFO)
        store_log.addHandler(logging.FileHandler(self.out / f"store-{os.getpid()}.log"))

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        images, _, indices = batch  # masked (and, with augment none, nothing else)
        self.batches.append((indices.cpu().clone(), images.cpu().clone()))

    def on_train_end(self, trainer, pl_module) -> None:
        dm = trainer.datamodule
        images = torch.cat([dm.source.train.images[: self.FIXED], dm.source.test.images[:8]])
        indices = torch.cat([torch.arange(self.FIXED), dm.num_train_pool + torch.arange(8)])
        store = {
            str(meta.parent.relative_to(dm.rank_provider.store)): (json.loads(meta.read_text())["created"], (meta.parent / "ranks.npy").stat().st_ino)
            for meta in Path(dm.rank_provider.store).glob("*/*/meta.json")
        }  # fmt: skip
        torch.save(
            {
                "rank": trainer.global_rank, "world_size": trainer.world_size, "pid": os.getpid(), "indices": indices,
                "masked": dm.mask(images.to(pl_module.device), indices.to(pl_module.device)).cpu(), "batches": self.batches,
                "store": store,
            },
            self.out / f"rank{trainer.global_rank}.pt",
        )  # fmt: skip


def make_base_checkpoint(path: Path) -> None:
    from lightning.pytorch import Trainer

    from roar.data.datamodule import ImageDataModule
    from roar.models.classifier import ImageClassifier

    torch.manual_seed(0)
    dm = ImageDataModule(source="digits", image_size=8, batch_size=64)
    model = ImageClassifier(arch="small_cnn", num_classes=10, in_chans=1, image_size=8, channel_mean=dm.channel_mean, channel_std=dm.channel_std)
    trainer = Trainer(max_steps=3, accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0)
    trainer.fit(model, datamodule=dm)
    trainer.save_checkpoint(path)


def run_with_timeout(cmd: list[str], timeout: float, **kwargs) -> subprocess.CompletedProcess:
    """Run a command in its own process group; on timeout kill the whole group (DDP ranks included) and fail."""
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True, **kwargs)
    try:
        output, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        output, _ = proc.communicate()
        pytest.fail(f"{' '.join(cmd)} did not finish in {timeout} s (a DDP hang?):\n{output[-4000:]}")
    return subprocess.CompletedProcess(cmd, proc.returncode, output)


def test_two_process_ddp_retrain_masks_alike_and_writes_one_set_of_outputs(tmp_path):
    from roar.attribution import StoreRanks
    from roar.data.roar import RoarDataModule

    base, store, logs, probe = tmp_path / "base.ckpt", tmp_path / "attributions", tmp_path / "logs", tmp_path / "probe"
    make_base_checkpoint(base)
    ranking = {"store": str(store), "base_checkpoint": str(base), "method": "gradient"}
    data = {"image_size": 8, "batch_size": 32, "augment": "none", "threshold": 0.5, "mode": "roar"}
    config = {
        "data": {"init_args": {**data, "ranks": {"class_path": "roar.attribution.StoreRanks", "init_args": ranking}}},
        "trainer": {
            "accelerator": "cpu", "devices": 2, "strategy": "ddp", "max_epochs": 1, "limit_train_batches": 3,
            "limit_val_batches": 2, "log_every_n_steps": 1, "enable_progress_bar": False,
            "logger": [
                {"class_path": "lightning.pytorch.loggers.CSVLogger", "init_args": {"save_dir": str(logs), "name": "roar"}},
                {"class_path": "lightning.pytorch.loggers.WandbLogger", "init_args": {"save_dir": str(logs), "project": "roar", "offline": True}},
            ],
            "callbacks": [
                {"class_path": "lightning.pytorch.callbacks.ModelCheckpoint", "init_args": {"save_last": True}},
                {"class_path": "test_scale.MaskProbe", "init_args": {"out": str(probe)}},
            ],
        },
    }  # fmt: skip
    (tmp_path / "ddp.yaml").write_text(yaml.safe_dump(config))
    cmd = [
        sys.executable, "train.py", "fit", "--config", "configs/digits.yaml", "--config", "configs/roar/digits.yaml",
        "--config", str(tmp_path / "ddp.yaml"),
    ]  # fmt: skip
    # one torch thread per rank: two ranks share two cores; tests/ on the path for the probe callback
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "tests"), os.environ.get("PYTHONPATH", "")]), "OMP_NUM_THREADS": "1", "WANDB_SILENT": "true"}
    proc = run_with_timeout(cmd, timeout=420, cwd=ROOT, env=env)
    assert proc.returncode == 0, proc.stdout[-4000:]

    ranks = [torch.load(probe / f"rank{r}.pt", weights_only=False) for r in (0, 1)]
    assert [r["rank"] for r in ranks] == [0, 1] and {r["world_size"] for r in ranks} == {2}
    assert ranks[0]["pid"] != ranks[1]["pid"]

    # the same masks on both ranks for the same global indices, and the ones this process computes
    reference = RoarDataModule(**{k: v for k, v in data.items() if k != "augment"}, ranks=StoreRanks(**ranking))
    reference.setup()
    pool, test = reference.source.train.images, reference.source.test.images
    expected = reference.mask(torch.cat([pool[:16], test[:8]]), ranks[0]["indices"])
    torch.testing.assert_close(ranks[0]["masked"], ranks[1]["masked"], rtol=0, atol=0)
    torch.testing.assert_close(ranks[0]["masked"], expected, rtol=0, atol=0)
    assert (expected != torch.cat([pool[:16], test[:8]])).any(), "threshold 0.5 changes pixels"

    # the sampler split the data: disjoint indices, and every batch a rank trained on is the masked image of its index
    seen = []
    for rank in ranks:
        assert len(rank["batches"]) == 3
        indices = torch.cat([i for i, _ in rank["batches"]])
        for idx, images in rank["batches"]:
            torch.testing.assert_close(images, reference.mask(pool[idx], idx), rtol=0, atol=0)
        seen.append(set(indices.tolist()))
    assert len(seen[0]) == len(seen[1]) == 96 and not seen[0] & seen[1]

    # ranks were computed once, in rank 0's prepare_data; rank 1 read the same finished entries
    logged = {r["rank"]: (probe / f"store-{r['pid']}.log").read_text().splitlines() for r in ranks}
    computed = {rank: sum(line.startswith("cached attribution ranks at") for line in lines) for rank, lines in logged.items()}
    assert computed == {0: 2, 1: 0}
    assert sum(line.startswith("reusing cached attribution ranks") for line in logged[1]) == 2  # rank 1's setup read them
    assert ranks[0]["store"] == ranks[1]["store"] and len(ranks[0]["store"]) == 2  # train and test, same files
    assert not list(store.glob("*/.*")), "no partial entries left"

    # one set of outputs: one version folder, one config, one metrics file, one checkpoint folder, one W&B run
    assert [p.name for p in (logs / "roar").iterdir()] == ["version_0"]
    assert len(list(logs.rglob("config.yaml"))) == 1 and len(list(logs.rglob("metrics.csv"))) == 1
    (ckpt_dir,) = [p for p in logs.rglob("checkpoints") if p.is_dir()]
    checkpoints = sorted(ckpt_dir.iterdir())
    assert len(checkpoints) == 2 and "last.ckpt" in [p.name for p in checkpoints]  # the epoch's and last, once each
    assert torch.load(ckpt_dir / "last.ckpt", weights_only=False)["global_step"] == 3
    assert len(list((logs / "wandb").glob("offline-run-*"))) == 1
    metrics = (logs / "roar" / "version_0" / "metrics.csv").read_text().splitlines()
    header = metrics[0].split(",")
    test_rows = [line.split(",") for line in metrics[1:] if line.split(",")[header.index("test/acc")]]
    assert len(test_rows) == 1, "test metrics logged once, synced"

    # The test after fit saw every test image exactly once over the two processes: its accuracy is
    # the single-process accuracy of the final weights, not that of a sampler that repeats images
    # to even out the shards (an odd-sized test split here), and Lightning no longer warns.
    from roar.models.classifier import ImageClassifier

    assert len(reference.split_dataset("test")) % 2 == 1
    model = ImageClassifier.load_from_checkpoint(ckpt_dir / "last.ckpt", map_location="cpu").eval()
    correct = 0
    with torch.no_grad():
        for images, labels, indices in reference.test_dataloader():
            correct += int((model(reference.mask(images, indices)).argmax(1) == labels).sum())
    assert float(test_rows[0][header.index("test/acc")]) == pytest.approx(correct / len(reference.split_dataset("test")), abs=1e-6)
    assert "DistributedSampler" not in proc.stdout
