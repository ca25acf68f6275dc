"""``longformer-staged-train CONFIG``: run a staged training schedule (paper §4.2) through fairseq.

CONFIG is a schedule YAML (``configs/char_lm/{small,large,demo}.yaml``): ``base`` is a complete fairseq
hydra config and every entry of ``phases`` is merged over it. Each phase runs ``fairseq-hydra-train``
in a subprocess with its own ``save_dir`` (``SAVE_DIR/<phase name>``). Phase k > 1 starts from phase
k-1's ``checkpoint_last.pt`` through fairseq's ``--finetune-from-model``, which resets the optimizer,
LR scheduler, meters and dataloader on the phase's first launch only; later launches resume from the
phase's own ``checkpoint_last.pt``. So killed and rerun with the same arguments, the runner skips
finished phases (``phase_done.json``) and continues the running one where it last saved.

Outputs: ``SAVE_DIR/phases.json`` (one object per finished phase) and ``SAVE_DIR/bpc.png``.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path
from typing import Iterable

from omegaconf import OmegaConf

from data_prep.atomic import atomic_file, write_text_atomic

PLUGIN_DIR = Path(__file__).absolute().parent
DONE_FILE = "phase_done.json"
WALL_FILE = "wall_s.json"
LOG_FILE = "train.log"
# Not "config": fairseq's own config dir has a config.yaml that would shadow it on hydra's search path.
PHASE_CONFIG = "phase_config"


class ScheduleError(Exception):
    pass


# ------------------------------------------------------------------------------------------- schedule


def load_schedule(path: Path) -> tuple[dict, list[dict]]:
    """The ``base`` config and the list of phase overrides, checked for the mistakes people make."""
    if not path.is_file():
        raise ScheduleError(f"schedule {path} does not exist; pass e.g. configs/char_lm/demo.yaml")
    raw = OmegaConf.to_container(OmegaConf.load(path), resolve=False)
    if not isinstance(raw, dict) or not isinstance(raw.get("base"), dict) or not raw.get("phases"):
        raise ScheduleError(f"{path} must hold a 'base' fairseq config and a non-empty 'phases' list")
    phases = raw["phases"]
    if not isinstance(phases, list) or not all(isinstance(p, dict) and p.get("name") for p in phases):
        raise ScheduleError(f"{path}: every entry of 'phases' must be a mapping with a 'name'")
    names = [p["name"] for p in phases]
    if len(set(names)) != len(names) or any(not str(n).replace("_", "").replace("-", "").isalnum() for n in names):
        raise ScheduleError(f"{path}: phase names must be unique and made of letters, digits, - and _; got {names}")
    return raw["base"], phases


def phase_config(base: dict, phase: dict) -> dict:
    overrides = {k: v for k, v in phase.items() if k != "name"}
    return OmegaConf.to_container(OmegaConf.merge(base, overrides), resolve=False)


# ---------------------------------------------------------------------------------------- checkpoints


def checkpoint_readable(path: Path) -> bool:
    """torch checkpoints are zip files; a write cut short leaves no readable central directory."""
    try:
        with zipfile.ZipFile(path) as archive:
            return bool(archive.namelist())
    except (zipfile.BadZipFile, OSError):
        return False


def repair_last_checkpoint(phase_dir: Path) -> None:
    """If a kill truncated ``checkpoint_last.pt`` (fairseq copies it last), fall back to the newest good one."""
    last = phase_dir / "checkpoint_last.pt"
    if not last.exists() or checkpoint_readable(last):
        return
    candidates = sorted(
        (p for p in phase_dir.glob("checkpoint*.pt") if p != last and checkpoint_readable(p)),
        key=lambda p: p.stat().st_mtime,
    )
    if candidates:
        print(f"[staged-train] {last} is truncated; resuming from {candidates[-1].name}", flush=True)
        os.replace(candidates[-1], last)
    else:
        print(f"[staged-train] {last} is truncated and no other checkpoint is readable; restarting the phase",
              flush=True)
        last.unlink()


# ------------------------------------------------------------------------------------------- logging


def parse_log(log_path: Path) -> dict[str, list]:
    """fairseq's JSON log lines -> sorted train_inner and valid points ``(update, bpc)``.

    The log holds every launch of the phase; a relaunch repeats the updates after its checkpoint,
    and its values replace those of the killed launch.
    """
    points: dict[str, dict] = {"train": {}, "valid": {}, "updates": {}}
    if log_path.exists():
        for line in log_path.read_text(errors="replace").splitlines():
            start = line.find("{")
            if start < 0:
                continue
            try:
                stats = json.loads(line[start:])
            except json.JSONDecodeError:
                continue
            if not isinstance(stats, dict):
                continue
            if "train_inner" in line[:start] and "bpc" in stats:
                points["train"][int(stats["num_updates"])] = float(stats["bpc"])
            elif "valid_bpc" in stats:
                points["valid"][int(stats["valid_num_updates"])] = float(stats["valid_bpc"])
            for key in ("num_updates", "train_num_updates", "valid_num_updates"):
                if key in stats:  # the last update is logged by validation / epoch end, not always by train_inner
                    points["updates"][int(stats[key])] = None
    return {kind: sorted(values.items()) for kind, values in points.items()}


class WallClock:
    """Seconds a phase has run, kept on disk every few seconds so a kill loses at most that much."""

    def __init__(self, phase_dir: Path):
        self.path = phase_dir / WALL_FILE
        self.before = json.loads(self.path.read_text())["wall_s"] if self.path.exists() else 0.0
        self.start = time.monotonic()
        self.saved_at = 0.0

    def total(self) -> float:
        return self.before + time.monotonic() - self.start

    def save(self, force: bool = False) -> None:
        now = time.monotonic()
        if force or now - self.saved_at > 5:
            write_text_atomic(self.path, json.dumps({"wall_s": round(self.total(), 1)}))
            self.saved_at = now


# ---------------------------------------------------------------------------------------------- phases


def run_phase(index: int, name: str, config: dict, phase_dir: Path, previous: Path | None,
              data: str | None, overrides: list[str]) -> dict:
    phase_dir.mkdir(parents=True, exist_ok=True)
    write_text_atomic(phase_dir / f"{PHASE_CONFIG}.yaml", OmegaConf.to_yaml(OmegaConf.create(config)))
    repair_last_checkpoint(phase_dir)

    command = [
        sys.executable, "-m", "fairseq_cli.hydra_train",
        "--config-dir", str(phase_dir), "--config-name", PHASE_CONFIG,
        f"common.user_dir={PLUGIN_DIR}",
        f"checkpoint.save_dir={phase_dir}",
        f"hydra.run.dir={phase_dir}",  # hydra's own logs and .hydra/ stay in the phase folder
    ]
    if data is not None:
        command.append(f"task.data={Path(data).resolve()}")
    if previous is not None:
        # First launch: load the previous phase with optimizer / LR scheduler / meters / dataloader
        # reset. Relaunch: fairseq ignores this and resumes from this phase's checkpoint_last.pt.
        command.append(f"checkpoint.finetune_from_model={previous}")
    command += overrides

    clock = WallClock(phase_dir)
    resumed = (phase_dir / "checkpoint_last.pt").exists()
    print(f"[staged-train] {name}: {'resuming' if resumed else 'starting'} -> {phase_dir}", flush=True)
    with open(phase_dir / LOG_FILE, "a") as log:
        process = subprocess.Popen(command, cwd=phase_dir, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                   text=True, bufsize=1)
        try:
            for line in process.stdout:
                sys.stdout.write(line)
                log.write(line)
                log.flush()
                clock.save()
            returncode = process.wait()
        finally:
            if process.poll() is None:
                process.terminate()
                process.wait()
            clock.save(force=True)
    if returncode != 0:
        raise ScheduleError(f"phase {name} failed (fairseq exit code {returncode}); its log is {phase_dir / LOG_FILE}. "
                            f"Fix the cause and rerun the same command to resume.")
    if not (phase_dir / "checkpoint_last.pt").exists():
        raise ScheduleError(f"phase {name} ended without writing {phase_dir / 'checkpoint_last.pt'}")

    points = parse_log(phase_dir / LOG_FILE)
    record = {
        "phase": index + 1,
        "name": name,
        "tokens_per_sample": config["task"]["tokens_per_sample"],
        "attention_window": config["model"].get("attention_window"),
        "batch_size": config["dataset"].get("batch_size"),
        "lr": config["optimization"]["lr"],
        "updates": points["updates"][-1][0] if points["updates"] else None,
        "train_bpc": points["train"][-1][1] if points["train"] else None,
        "valid_bpc": points["valid"][-1][1] if points["valid"] else None,
        "wall_s": round(clock.total(), 1),
        "checkpoint": str(phase_dir / "checkpoint_last.pt"),
    }
    write_text_atomic(phase_dir / DONE_FILE, json.dumps(record, indent=2) + "\n")
    return record


def plot(save_dir: Path, phase_dirs: list[tuple[str, Path]]) -> Path:
    """BPC over updates (counted across phases) with a dashed line at every phase boundary."""
    import matplotlib

    matplotlib.use("Agg")
    import logging

    import matplotlib.pyplot as plt

    logging.getLogger("matplotlib").setLevel(logging.WARNING)

    fig, ax = plt.subplots(figsize=(8, 4.5))
    offset = 0
    for i, (name, phase_dir) in enumerate(phase_dirs):
        points = parse_log(phase_dir / LOG_FILE)
        for kind, style in (("train", "-"), ("valid", "o-")):  # ("updates" has no values to draw)
            if points[kind]:
                xs, ys = zip(*points[kind])
                ax.plot([offset + x for x in xs], ys, style, color=f"C{0 if kind == 'train' else 1}",
                        label=f"{kind} BPC" if i == 0 else None, markersize=4)
        last = points["updates"][-1][0] if points["updates"] else 0
        if i:
            ax.axvline(offset, color="grey", linestyle="--", linewidth=1)
        ax.text(offset, 1.0, f" {name}", transform=ax.get_xaxis_transform(), va="top", fontsize=8)
        offset += last
    ax.set_xlabel("updates (all phases)")
    ax.set_ylabel("bits per character")
    ax.grid(alpha=0.3)
    ax.legend()
    out = save_dir / "bpc.png"
    with atomic_file(out) as tmp:
        fig.savefig(tmp, dpi=100, bbox_inches="tight")
    plt.close(fig)
    return out


def run_schedule(config_path: Path, save_dir: Path, data: str | None, overrides: list[str]) -> list[dict]:
    base, phases = load_schedule(config_path)
    save_dir = save_dir.resolve()
    save_dir.mkdir(parents=True, exist_ok=True)
    records, previous, done_dirs = [], None, []
    for index, phase in enumerate(phases):
        name = phase["name"]
        phase_dir = save_dir / name
        done = phase_dir / DONE_FILE
        if done.exists():
            print(f"[staged-train] {name}: finished earlier, skipped", flush=True)
            record = json.loads(done.read_text())
        else:
            record = run_phase(index, name, phase_config(base, phase), phase_dir, previous, data, overrides)
        records.append(record)
        done_dirs.append((name, phase_dir))
        previous = phase_dir / "checkpoint_last.pt"
        write_text_atomic(save_dir / "phases.json", json.dumps(records, indent=2) + "\n")
        plot(save_dir, done_dirs)
    return records


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="longformer-staged-train",
        description="Run a staged (multi-phase) fairseq training schedule; rerun the same command to resume.",
    )
    parser.add_argument("config", help="schedule YAML, e.g. configs/char_lm/small.yaml")
    parser.add_argument("--data", help="binarised data dir (what longformer-prep-charlm --output wrote)")
    parser.add_argument("--save-dir", default="checkpoints/staged", help="one sub-folder per phase goes here")
    parser.add_argument("overrides", nargs="*",
                        help="hydra overrides applied to every phase, e.g. dataset.batch_size=4 common.seed=2")
    return parser


def run(argv: Iterable[str] | None = None) -> list[dict]:
    """Parse the command line, run the schedule, return the phase records."""
    args = build_parser().parse_intermixed_args(argv)
    bad = [o for o in args.overrides if "=" not in o]
    if bad:
        raise SystemExit(f"error: overrides must look like key=value (e.g. dataset.batch_size=4), got {bad}")
    if args.data is not None and not (Path(args.data) / "dict.txt").is_file():
        raise SystemExit(f"error: --data {args.data} has no dict.txt; pass the --output directory of "
                         f"longformer-prep-charlm")
    # SIGTERM (a scheduler's kill) unwinds like Ctrl-C, so the running fairseq child is stopped too.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    try:
        records = run_schedule(Path(args.config), Path(args.save_dir), args.data, args.overrides)
    except ScheduleError as err:
        raise SystemExit(f"error: {err}") from None
    print(json.dumps(records, indent=2))
    return records


def main(argv: Iterable[str] | None = None) -> None:
    run(argv)  # the console script's exit status is main()'s return value: keep it None


if __name__ == "__main__":
    main()
