"""Golden runs: small real runs whose results must not change, bit for bit, when code is reorganised.

Each case is a whole ``utils/main.py`` run on a Fashion-MNIST subset (``--nf 8 --samples_per_class 20
--validation 1``: 18 training and 2 test images per class), on one CPU thread with a fixed seed. The fixture
``tests/golden/runs.json`` holds each run's accuracy matrices, final metrics and a SHA-256 of the trained network's
parameters, recorded before the redesign of issue 13 (the AdaB²N cases again for issue 15's one-pass statistics:
the same math, rounded otherwise; in float64 the first step's loss agrees to 1e-16 and the gap then grows as the
old code's own does under ``--channels_last 1``, to 1e-2 by step 20, because online training amplifies rounding).
A change of training arithmetic fails here; an intended one
regenerates the fixture with ``NORMCL_RECORD_GOLDEN=1 pytest tests/test_golden.py`` and says why in its commit.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import pytest
import torch

FIXTURE = Path(__file__).with_name("golden") / "runs.json"
COMMON = (
    "--dataset seq-fmnist --lr 0.03 --bs 10 --epochs 1 --nf 8 --samples_per_class 20 --validation 1 --seed 1 "
    "--nowand 1 --non_verbose 1 --device cpu --num_threads 1"
)
ADAB2N = "--nl AdaB2N --kappa 0.4 --lambd 0.1 --ada_t0 0"
CASES: dict[str, str] = {
    f"{model}-{norm}": f"--model {model}{buffer} " + (ADAB2N if norm == "AdaB2N" else f"--nl {norm}")
    for model, buffer in (
        ("sgd", ""),
        ("joint", ""),
        ("er", " --buffer_size 50"),
        ("der", " --buffer_size 50"),
        ("derpp", " --buffer_size 50"),
        ("er_ace", " --buffer_size 50"),
    )
    for norm in ("BN", "GN", "AdaB2N")
}
CASES.update(
    {
        "er_ace-LN": "--model er_ace --buffer_size 50 --nl LN",
        "er_ace-IN": "--model er_ace --buffer_size 50 --nl IN",
        "er_ace-CN": "--model er_ace --buffer_size 50 --nl CN --no_affine 1",
        "er_ace-BRN": "--model er_ace --buffer_size 50 --nl BRN --brn_rmax 2 --brn_dmax 1",
        "derpp-AdaB2N-renorm-separate": f"--model derpp --buffer_size 50 {ADAB2N} --adab2n_renorm 1 "
        "--forward_mode separate --ada_t0 1 --kappa 0",
        "er-BN-ring": "--model er --buffer_size 50 --buffer_mode ring --nl BN",
    }
)


def parameter_digest(net: torch.nn.Module) -> str:
    """SHA-256 of every parameter's bytes, in module order: equal only if training was bit-identical."""
    digest = hashlib.sha256()
    for p in net.parameters():
        digest.update(p.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def run_case(flags: str, results_path: Path) -> dict[str, Any]:
    """Run one case through ``utils.main`` and return what the fixture records of it."""
    import utils.main as entry

    built: list[torch.nn.Module] = []
    original = entry.build_model

    def build_and_keep(*args: Any, **kwargs: Any) -> Any:
        model = original(*args, **kwargs)
        built.append(model)
        return model

    entry.build_model = build_and_keep
    threads = torch.get_num_threads()
    try:
        argv = [*COMMON.split(), *flags.split(), "--results_path", str(results_path), "--run_name", "golden"]
        results = entry.run(entry.parse_args(argv))
    finally:
        entry.build_model = original
        torch.set_num_threads(threads)
    return {
        "class_il": results["accuracy_matrix"]["class_il"],
        "task_il": results["accuracy_matrix"]["task_il"],
        "final": results["final"],
        "parameters_sha256": parameter_digest(built[0].net),
    }


@pytest.mark.parametrize("case", sorted(CASES))
def test_golden_run_is_unchanged(case: str, tmp_path: Path) -> None:
    got = run_case(CASES[case], tmp_path)
    if os.environ.get("NORMCL_RECORD_GOLDEN") == "1":
        record = json.loads(FIXTURE.read_text()) if FIXTURE.exists() else {}
        FIXTURE.parent.mkdir(exist_ok=True)
        FIXTURE.write_text(json.dumps({**record, case: got}, indent=1, sort_keys=True) + "\n")
        pytest.skip("recorded")
    expected = json.loads(FIXTURE.read_text())[case]
    assert got["class_il"] == expected["class_il"]
    assert got["task_il"] == expected["task_il"]
    assert got["final"] == expected["final"]
    assert got["parameters_sha256"] == expected["parameters_sha256"]


def test_the_fixture_has_every_case() -> None:
    assert sorted(json.loads(FIXTURE.read_text())) == sorted(CASES)
