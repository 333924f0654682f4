"""Commands that neither train nor plot must not import torch (6 s of startup, issue 15)."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

from wdlab.store import Store

_PROBE = textwrap.dedent(
    """
    import contextlib, io, json, sys
    from wdlab.cli import build_parser, main

    build_parser()
    after_parser = sorted(m for m in ("torch", "matplotlib", "pydantic") if m in sys.modules)
    codes = {}
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        for argv in json.loads(sys.argv[1]):
            codes[" ".join(argv[:1])] = main(argv)
    heavy = sorted(m for m in ("torch", "matplotlib") if m in sys.modules)
    print(json.dumps({"after_parser": after_parser, "codes": codes, "heavy": heavy,
                      "out": out.getvalue()}))
    """
)


def test_parser_and_read_only_commands_leave_torch_out(tmp_path) -> None:
    store_path = tmp_path / "s.db"
    with Store(store_path) as store:
        run_id = store.create_run(workload="teacher", seed=3, name="light",
                                  config={"optimizer": {"name": "adamw", "lr": 1e-3}})
        store.log_metrics(run_id, 1, {"train_loss": 0.5})
        store.update_run(run_id, status="finished", result={"metric": "val_mse"})
    store = str(store_path)
    commands = [
        ["runs", "--store", store],
        ["sweeps", "--store", store],
        ["show", "light", "--no-plots", "--store", store],
        ["export", "light", "-o", str(tmp_path / "m.csv"), "--store", store],
    ]
    done = subprocess.run([sys.executable, "-c", _PROBE, json.dumps(commands)],
                          capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout.splitlines()[-1])
    assert "torch" not in report["after_parser"]
    assert report["codes"] == {"runs": 0, "sweeps": 0, "show": 0, "export": 0}
    assert report["heavy"] == [], report["heavy"]
    assert run_id in report["out"] and "light" in report["out"]
    assert (tmp_path / "m.csv").read_text().splitlines()[1] == "1,train_loss,0.5"


def test_help_of_every_command_leaves_torch_out() -> None:
    probe = textwrap.dedent(
        """
        import contextlib, io, sys
        from wdlab.cli import COMMANDS, main
        for argv in [["--help"]] + [[name, "--help"] for name in COMMANDS
                                     if name not in ("transfer", "coordcheck")]:
            with contextlib.redirect_stdout(io.StringIO()):
                try:
                    main(argv)
                except SystemExit as exit:
                    assert exit.code == 0, (argv, exit.code)
        print("torch" in sys.modules)
        """
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                          check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["False"]
