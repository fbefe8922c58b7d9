"""Are a galaxy's nearest neighbours in feature space like it, and does the search scale?

    python benchmarks/similarity.py                     # quality on the test split, then 100,000 galaxies
    python benchmarks/similarity.py --parts quality     # or: scale

quality: the test split's 1,004 galaxies embedded by the model inside gzmorph (which never saw them); for each, its
  10 nearest test galaxies (cosine, exact) against 10 random ones: how often their volunteers' majority answer to Q1
  (smooth / features / star) and to Q2 (edge-on or not, among the galaxies most volunteers called featured) is the
  query's, and the mean RMSE between the 37 vote fractions of query and neighbour.
scale: 100,000 galaxies -- the shared JPEGs (training and test) repeated under new ids through symbolic links --
  through `gzmorph embed` and `gzmorph similar` as a user runs them (new processes): wall-clock, peak memory, and a
  query's latency once the index exists; the approximate (HNSW) index's recall of the exact 10 nearest.
Writes benchmarks/results/similarity-<machine>.json.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import numpy as np  # noqa: E402

from gzmorph import tree  # noqa: E402
from gzmorph.data.catalogue import read_catalogue  # noqa: E402
from gzmorph.data.splits import read_splits  # noqa: E402
from gzmorph.inference import similar as sim  # noqa: E402
from gzmorph.inference.embed import embed  # noqa: E402
from machine import describe_machine, machine_tag  # noqa: E402

K = 10
SCALE_N = 100_000


def quality(data: Path, work: Path) -> dict:
    cat = read_catalogue(data / "training_solutions_rev1.csv", require_all=True)
    splits = read_splits(data / "splits.csv")
    rows = np.array([splits[int(g)] == "test" for g in cat.ids])
    test = cat.subset(np.flatnonzero(rows))
    listing = work / "test.txt"
    listing.write_text("\n".join(str(data / "images_training_rev1" / f"{g}.jpg") for g in test.ids) + "\n")
    embed(None, listing, work / "test-features", progress=False)
    features = sim.open_features(work / "test-features.npy")
    labels = {int(g): v for g, v in zip(test.ids, test.labels)}
    y = np.stack([labels[int(g)] for g in features.ids])
    index = sim.Index(features, exact=True)
    _, near = index.search(np.asarray(features.vectors, np.float32), K + 1)
    near = np.array([[r for r in row if r != i][:K] for i, row in enumerate(near)])
    rng = np.random.default_rng(0)
    rand = np.array([rng.choice(np.delete(np.arange(len(y)), i), K, replace=False) for i in range(len(y))])
    q1, q2 = tree.QUESTION_BY_NAME["shape"].slice, tree.QUESTION_BY_NAME["edge_on"].slice
    maj1, maj2 = y[:, q1].argmax(1), y[:, q2].argmax(1)
    featured = maj1 == 1  # Q2 asked of most of the galaxy's volunteers

    def agreement(other: np.ndarray) -> dict:
        same1 = (maj1[other] == maj1[:, None]).mean()
        both = featured[:, None] & featured[other]
        same2 = (maj2[other] == maj2[:, None])[both].mean()
        dist = np.sqrt(((y[other] - y[:, None, :]) ** 2).mean(-1)).mean()
        return {"q1_majority_agreement": float(same1), "q2_majority_agreement": float(same2),
                "mean_rmse_37": float(dist)}

    return {"n": len(y), "k": K, "model": features.meta["model"], "weights_sha256": features.meta["weights_sha256"],
            "neighbours": agreement(near), "random": agreement(rand)}


def _timed(cmd: list[str], env: dict) -> tuple[float, float, str]:
    """(seconds, peak resident MiB, stdout) of a command, measured by GNU time where it exists, else by wall."""
    gnu = Path("/usr/bin/time")
    started = time.perf_counter()
    if gnu.exists():
        done = subprocess.run([str(gnu), "-v", *cmd], env=env, capture_output=True, text=True, check=True)
        peak = float(re.search(r"Maximum resident set size \(kbytes\): (\d+)", done.stderr).group(1)) / 1024
    else:
        done = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True)
        peak = float("nan")
    return time.perf_counter() - started, peak, done.stdout


def scale(data: Path, work: Path) -> dict:
    sources = sorted((data / "images_training_rev1").glob("*.jpg")) + sorted((data / "images_test_rev1").glob("*.jpg"))
    links = work / "links"
    links.mkdir(exist_ok=True)
    for i in range(SCALE_N):  # new ids 1_000_000 + i, each a link to a real JPEG
        link = links / f"{1_000_000 + i}.jpg"
        if not link.exists():
            link.symlink_to(sources[i % len(sources)])
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    gz = [sys.executable, "-m", "gzmorph.cli"]
    out = {"n": SCALE_N}
    seconds, peak, _ = _timed([*gz, "embed", str(links), "-o", str(work / "big"), "-q"], env)
    out["embed"] = {"seconds": seconds, "img_per_s": SCALE_N / seconds, "peak_rss_mib": peak}
    query = "1000123"
    seconds, peak, first = _timed([*gz, "similar", str(work / "big.npy"), "--query", query, "-k", "12"], env)
    out["similar_first"] = {"seconds": seconds, "peak_rss_mib": peak, "note": "builds the HNSW index"}
    seconds, peak, again = _timed([*gz, "similar", str(work / "big.npy"), "--query", query, "-k", "12"], env)
    search_ms = float(re.search(r"search: (\d+) ms", again).group(1))
    out["similar_again"] = {"seconds": seconds, "peak_rss_mib": peak, "search_ms": search_ms,
                            "note": "index loaded from beside the features; seconds include process start"}
    seconds, peak, _ = _timed([*gz, "similar", str(work / "big.npy"), "--odd", "20"], env)
    out["odd"] = {"seconds": seconds, "peak_rss_mib": peak}
    features = sim.open_features(work / "big.npy")
    approx, exact = sim.Index(features), sim.Index(features, exact=True)
    queries = np.random.default_rng(1).choice(SCALE_N, 200, replace=False)
    vectors = np.asarray(features.vectors[np.sort(queries)], np.float32)
    # Repeated images share a feature vector: recall counts a neighbour found when its similarity reaches the exact
    # 10th best (which of several equal vectors is returned is arbitrary).
    s_exact, _ = exact.search(vectors, K)
    s_approx, _ = approx.search(vectors, K)
    out["hnsw_recall_at_10"] = float((s_approx >= s_exact[:, -1:] - 1e-4).mean())
    started = time.perf_counter()
    for v in vectors[:50]:
        approx.search(v[None], 12)
    out["query_ms_in_process"] = (time.perf_counter() - started) / 50 * 1000
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default=str(HERE.parent.parent / "shared" / "data" / "galaxy-zoo"))
    p.add_argument("--parts", nargs="+", default=["quality", "scale"], choices=["quality", "scale"])
    args = p.parse_args()
    data = Path(args.data)
    machine = describe_machine()
    path = HERE / "results" / f"similarity-{machine_tag(machine)}.json"
    result = json.loads(path.read_text()) if path.exists() else {}
    result.update({"benchmark": "similarity", "machine": machine, "command": "python benchmarks/similarity.py"})
    with tempfile.TemporaryDirectory(prefix="gzmorph-similarity-") as tmp:
        for part in args.parts:
            result[part] = (quality if part == "quality" else scale)(data, Path(tmp))
            print(json.dumps(result[part], indent=2), flush=True)
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {path.relative_to(HERE.parent)}")


if __name__ == "__main__":
    main()
