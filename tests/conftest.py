"""Suite-wide fixtures."""

import pytest
import torch

# torch's thread count when the suite starts (the machine's default)
DEFAULT_THREADS = torch.get_num_threads()


@pytest.fixture(autouse=True)
def _default_torch_threads():
    """A run built in-process with ``threads=N`` sets torch's thread count for the whole process (module
    fixtures included); every test starts from the default so its numerics do not depend on which tests
    ran before it."""
    torch.set_num_threads(DEFAULT_THREADS)
    yield
    torch.set_num_threads(DEFAULT_THREADS)


@pytest.fixture
def train_steps(tmp_path, capsys):
    """Run a shipped recipe for a few steps through the CLI in-process; return the logged step rows (step > 0).

    Asserts the run exits 0 (showing its stderr otherwise) and logs exactly ``steps`` step rows.
    """
    import json

    from rlfold.cli import main

    def run(recipe: str, *overrides: str, steps: int = 2) -> list[dict]:
        run_dir = tmp_path / "run"
        rc = main(["train", recipe, f"run_dir={run_dir}", f"train.steps={steps}", "train.prompts_per_step=4",
                   "eval.size=8", "eval.every=0", "checkpoint.every=0", "log.progress=false", "threads=1",
                   *overrides])
        assert rc == 0, capsys.readouterr().err
        rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
        out = [r for r in rows if r["step"] > 0]
        assert len(out) == steps
        return out

    return run
