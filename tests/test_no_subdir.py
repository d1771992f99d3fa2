"""--no-subdir: experiments share the output root, each with its own small records, and names
stay within 255 bytes (SPEC R9, X2; issue 9's quadratic records and ENAMETOOLONG)."""

from __future__ import annotations

from pathlib import Path


from runlib import load, run, write


def test_no_subdir_1600_tasks_keep_one_small_record_per_experiment(tmp_path: Path):
    write(tmp_path, """
        template:
          t: "true"
        resource: [0, 1]
        ---
        i: [%s]
        """ % ", ".join(str(i) for i in range(1600)))
    code, out, err = run(["--no-subdir"], tmp_path, {"MLRUNNER_FSYNC": "0"}, timeout=600)
    assert code == 0, out + err
    assert "Finished: 1600, failed: 0" in out
    root = tmp_path / "output"
    stats = sorted(p.name for p in root.glob("stat.*"))
    params = sorted(p.name for p in root.glob("param.*"))
    assert stats == sorted(f"stat.I_{i}" for i in range(1600))
    assert params == sorted(f"param.I_{i}" for i in range(1600))
    assert not (root / "stat").exists() and not (root / "param").exists()
    largest = max(p.stat().st_size for p in root.iterdir() if p.name.startswith(("stat.", "param.")))
    assert largest < 2048, f"a record file grew to {largest} bytes"
    assert {k: v for k, v in load(root / "stat.I_1599").items() if not k.startswith("_")} == {"t": "finished"}


def test_no_subdir_a_255_byte_name_runs_and_resumes(tmp_path: Path):
    write(tmp_path, """
        template:
          t: echo {x} {y} {z} > /dev/null
        resource: [0]
        ---
        x: [%s]
        y: [%s]
        z: [%s]
        """ % ("a" * 120, "b" * 120, "c" * 120))
    code, out, err = run(["--no-subdir"], tmp_path)
    assert code == 0, out + err
    root = tmp_path / "output"
    names = [p.name for p in root.iterdir()]
    assert max(len(n.encode()) for n in names) <= 255
    stats = [n for n in names if n.startswith("stat.")]
    assert len(stats) == 1 and len(stats[0].encode()) == 255  # the name was cut, with a hash
    code, out, err = run(["--no-subdir"], tmp_path)
    assert code == 0, out + err
    assert "already finished: 1" in out and "START" not in out
