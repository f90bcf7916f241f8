"""How the paper tier reads its largest published file: tdabench's JSON-lines reader against
``datasets.load_dataset`` (the authors' script's reader), on a synthetic ``safe/train.jsonl`` of
the published file's size (about 361 MB) and shape (``prompt``, ``response``, ``category``).

Each reader runs in a fresh process and turns the file into the pool's examples (every method
needs the pool's text as Python strings); the figures are wall time, peak RSS and, for
``datasets``, the Arrow cache it writes, on a cold and a warm cache; a hash of the examples
made shows that both read the same text and labels.

    python results/perf/paper_reader.py      # needs `pip install datasets -c constraints.txt`

writes ``results/perf/paper_reader.json``.
"""

from __future__ import annotations

import json
import platform
import random
import subprocess
import sys
import tempfile
from pathlib import Path

SIZE_MB = 361
VOCAB = ("the of and to in is that it for on with as was by be this are or his from at which but have an "
         "they not you one all had we can her has there been if more when will would who so no my what "
         "how help safe harm illegal advice question answer because person people should").split()
CATEGORIES = ("Privacy Violation", "Insulting Behavior", "Drugs", "Violence", "Economic Crime", "Cybercrime")

READ = {
    "tdabench": """
from tdabench.tasks import paper
examples = paper.read_examples(Path(sys.argv[1]), "safe")
""",
    "datasets": """
from datasets import load_dataset
from tdabench.tasks import paper
rows = load_dataset("json", data_files=sys.argv[1], split="train", cache_dir=sys.argv[2])
examples = [paper.to_example(row, i, "safe") for i, row in enumerate(rows)]
""",
}
TIMED = """
import json, resource, sys, time
from pathlib import Path
start = time.perf_counter()
{read}
wall_s = round(time.perf_counter() - start, 2)
peak = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
import hashlib
text = "\\x00".join(f"{{e.prompt}}\\x01{{e.response}}\\x01{{e.source}}" for e in examples)
digest = hashlib.sha256(text.encode())
print(json.dumps({{"examples": len(examples), "wall_s": wall_s, "peak_rss_mib": peak,
                  "sha256_of_examples": digest.hexdigest()[:16]}}))
"""


def write_file(path: Path, size_mb: int = SIZE_MB, seed: int = 0) -> None:
    """Rows of 10-120 prompt words and 50-500 response words until ``size_mb`` MiB."""
    rng = random.Random(seed)
    written, target = 0, size_mb * 2**20
    with open(path, "w") as f:
        while written < target:
            row = {"prompt": " ".join(rng.choices(VOCAB, k=rng.randint(10, 120))),
                   "response": " ".join(rng.choices(VOCAB, k=rng.randint(50, 500))),
                   "category": rng.choice(CATEGORIES)}
            written += f.write(json.dumps(row) + "\n")


def measure(reader: str, path: Path, cache: Path) -> dict:
    program = TIMED.format(read=READ[reader])
    done = subprocess.run([sys.executable, "-c", program, str(path), str(cache)], capture_output=True,
                          text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path, cache = Path(tmp) / "train.jsonl", Path(tmp) / "arrow"
        write_file(path)
        runs = {"tdabench": measure("tdabench", path, cache),
                "datasets, cold cache": measure("datasets", path, cache),
                "datasets, warm cache": measure("datasets", path, cache)}
        arrow_mib = round(sum(f.stat().st_size for f in cache.rglob("*") if f.is_file()) / 2**20)
        import datasets

        out = {"file_mib": round(path.stat().st_size / 2**20), "runs": runs, "arrow_cache_mib": arrow_mib,
               "datasets": datasets.__version__, "python": platform.python_version(),
               "machine": f"{platform.processor() or platform.machine()}, {platform.node()}",
               "command": "python results/perf/paper_reader.py"}
    target = Path(__file__).with_suffix(".json")
    target.write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
