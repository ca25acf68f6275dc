"""``longformer-staged-train CONFIG``: run a staged training schedule (paper §4.2) through fairseq.

CONFIG is a schedule YAML (``configs/char_lm/{small,large,demo}.yaml``): ``base`` is a complete fairseq
hydra config and every entry of ``phases`` is merged over it. Each phase runs ``fairseq-hydra-train``
in a subprocess with its own ``save_dir`` (``OUTPUT/<phase name>``, OUTPUT being ``--output``). Phase
k > 1 starts from phase k-1's ``checkpoint_last.pt`` through fairseq's ``--finetune-from-model``, which
resets the optimizer, LR scheduler, meters and dataloader on the phase's first launch only; later
launches resume from the phase's own ``checkpoint_last.pt``. So killed and rerun with the same
arguments, the runner skips finished phases (``phase_done.json``) and continues the running one where
it last saved.

Each phase shows one progress bar (updates, latest train / valid BPC, time left) fed from fairseq's log,
which goes to ``OUTPUT/<phase>/train.log`` (``--verbose`` also streams it to the terminal); the run ends
with a table of the phases.

Outputs: ``OUTPUT/phases.json`` (one object per finished phase) and ``OUTPUT/bpc.png``.
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
from tqdm import tqdm

from data_prep.atomic import atomic_file, write_text_atomic
from data_prep.flags import add_renamed_flag

PLUGIN_DIR = Path(__file__).absolute().parent
DONE_FILE = "phase_done.json"
WALL_FILE = "wall_s.json"
LOG_FILE = "train.log"
# Not "config": fairseq's own config dir has a config.yaml that would shadow it on hydra's search path.
PHASE_CONFIG = "phase_config"
ERROR_TAIL_LINES = 30  # lines of a failed launch's output shown with the error


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


def parse_log_line(line: str) -> dict | None:
    """One line of fairseq's JSON log -> ``{"updates": int | None, "train_bpc": ..., "valid_bpc": ...}``.

    ``train_bpc`` comes from ``train_inner`` lines, ``valid_bpc`` from validation; the update count
    from whichever of them (or the epoch summary) carries one. None for any other line.
    """
    start = line.find("{")
    if start < 0:
        return None
    try:
        stats = json.loads(line[start:])
    except json.JSONDecodeError:
        return None
    if not isinstance(stats, dict):
        return None
    point = {"updates": None, "train_bpc": None, "valid_bpc": None}
    if "train_inner" in line[:start] and "bpc" in stats:
        point["train_bpc"] = float(stats["bpc"])
    elif "valid_bpc" in stats:
        point["valid_bpc"] = float(stats["valid_bpc"])
    for key in ("num_updates", "train_num_updates", "valid_num_updates"):
        if key in stats:  # the last update is logged by validation / epoch end, not always by train_inner
            point["updates"] = int(stats[key])
    return point if any(v is not None for v in point.values()) else None


def parse_log(log_path: Path) -> dict[str, list]:
    """fairseq's JSON log lines -> sorted train_inner and valid points ``(update, bpc)``.

    The log holds every launch of the phase; a relaunch repeats the updates after its checkpoint,
    and its values replace those of the killed launch.
    """
    points: dict[str, dict] = {"train": {}, "valid": {}, "updates": {}}
    if log_path.exists():
        for line in log_path.read_text(errors="replace").splitlines():
            point = parse_log_line(line)
            if point is None or point["updates"] is None:
                continue
            for kind in ("train", "valid"):
                if point[f"{kind}_bpc"] is not None:
                    points[kind][point["updates"]] = point[f"{kind}_bpc"]
            points["updates"][point["updates"]] = None
    return {kind: sorted(values.items()) for kind, values in points.items()}


class PhaseProgress:
    """One progress bar for a running phase: updates done of ``max_update``, the latest train and valid
    BPC, elapsed and remaining time. Fed the phase's log lines as fairseq writes them."""

    def __init__(self, name: str, tokens_per_sample, max_update, done: int = 0, file=None):
        self.bar = tqdm(total=max_update or None, initial=done, desc=f"{name} ({tokens_per_sample} tokens)",
                        unit="update", dynamic_ncols=True, file=file)
        self.latest = {"train_bpc": None, "valid_bpc": None}

    def feed(self, line: str) -> None:
        point = parse_log_line(line)
        if point is None:
            return
        for key in self.latest:
            if point[key] is not None:
                self.latest[key] = point[key]
        postfix = {key.replace("_bpc", " BPC"): f"{value:.3f}" for key, value in self.latest.items()
                   if value is not None}
        if postfix:
            self.bar.set_postfix(postfix, refresh=False)
        if point["updates"] is not None and point["updates"] != self.bar.n:
            self.bar.update(point["updates"] - self.bar.n)  # a relaunch may start below the last logged update
        else:
            self.bar.refresh()

    def close(self) -> None:
        self.bar.close()


def format_duration(seconds: float) -> str:
    minutes, secs = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m{secs:02d}s" if hours else f"{minutes}m{secs:02d}s"


def phase_table(records: list[dict]) -> str:
    """The finished phases as a small text table (what ``phases.json`` holds, for people)."""
    rows = [("phase", "seq length", "updates", "train BPC", "valid BPC", "wall time")]
    for r in records:
        rows.append((r["name"], str(r["tokens_per_sample"]), str(r["updates"]),
                     *("-" if r[k] is None else f"{r[k]:.4f}" for k in ("train_bpc", "valid_bpc")),
                     format_duration(r["wall_s"])))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(cell.ljust(w) if i == 0 else cell.rjust(w) for i, (cell, w) in
                                enumerate(zip(row, widths))).rstrip() for row in rows)


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
              data: str | None, overrides: list[str], verbose: bool = False) -> dict:
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

    log_path = phase_dir / LOG_FILE
    clock = WallClock(phase_dir)
    resumed = (phase_dir / "checkpoint_last.pt").exists()
    print(f"[staged-train] {name}: {'resuming' if resumed else 'starting'} -> {phase_dir} "
          f"(fairseq log: {log_path})", flush=True)
    logged = parse_log(log_path)["updates"]
    progress = None if verbose else PhaseProgress(
        name, config["task"].get("tokens_per_sample"), config["optimization"].get("max_update"),
        done=logged[-1][0] if resumed and logged else 0)
    launch_lines: list[str] = []  # this launch's output, for the error message
    with open(log_path, "a") as log:
        process = subprocess.Popen(command, cwd=phase_dir, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                   text=True, bufsize=1)
        try:
            for line in process.stdout:
                log.write(line)
                log.flush()
                if verbose:
                    sys.stdout.write(line)
                else:
                    progress.feed(line)
                    launch_lines = launch_lines[-(ERROR_TAIL_LINES - 1):] + [line]
                clock.save()
            returncode = process.wait()
        finally:
            if process.poll() is None:
                process.terminate()
                process.wait()
            clock.save(force=True)
            if progress is not None:
                progress.close()
    if returncode != 0:
        tail = "".join(launch_lines)
        raise ScheduleError(f"phase {name} failed (fairseq exit code {returncode}); its log is {log_path}"
                            + (f", ending:\n{tail}" if tail else "")
                            + "\nFix the cause and rerun the same command to resume.")
    if not (phase_dir / "checkpoint_last.pt").exists():
        raise ScheduleError(f"phase {name} ended without writing {phase_dir / 'checkpoint_last.pt'}")

    points = parse_log(log_path)
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


def run_schedule(config_path: Path, save_dir: Path, data: str | None, overrides: list[str],
                 verbose: bool = False) -> list[dict]:
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
            record = run_phase(index, name, phase_config(base, phase), phase_dir, previous, data, overrides,
                               verbose)
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
    add_renamed_flag(parser, "--input", "--data",
                     help="binarised data dir (what longformer-prep-charlm --output wrote)")
    add_renamed_flag(parser, "--output", "--save-dir", default="checkpoints/staged",
                     help="one sub-folder of checkpoints and logs per phase goes here")
    parser.add_argument("--verbose", action="store_true",
                        help="stream fairseq's log to the terminal instead of one progress bar per phase "
                             "(the log is in OUTPUT/<phase>/train.log either way)")
    parser.add_argument("overrides", nargs="*",
                        help="hydra overrides applied to every phase, e.g. dataset.batch_size=4 common.seed=2")
    return parser


def run(argv: Iterable[str] | None = None, show_table: bool = True) -> list[dict]:
    """Parse the command line, run the schedule, print the phase table, return the phase records."""
    args = build_parser().parse_intermixed_args(argv)
    bad = [o for o in args.overrides if "=" not in o]
    if bad:
        raise SystemExit(f"error: overrides must look like key=value (e.g. dataset.batch_size=4), got {bad}")
    if args.input is not None and not (Path(args.input) / "dict.txt").is_file():
        raise SystemExit(f"error: --input {args.input} has no dict.txt; pass the --output directory of "
                         f"longformer-prep-charlm")
    # SIGTERM (a scheduler's kill) unwinds like Ctrl-C, so the running fairseq child is stopped too.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    try:
        records = run_schedule(Path(args.config), Path(args.output), args.input, args.overrides, args.verbose)
    except ScheduleError as err:
        raise SystemExit(f"error: {err}") from None
    if show_table:
        print(f"\n{phase_table(records)}\n\nPer phase: {Path(args.output) / 'phases.json'}; "
              f"BPC curves: {Path(args.output) / 'bpc.png'}")
    return records


def main(argv: Iterable[str] | None = None) -> None:
    run(argv)  # the console script's exit status is main()'s return value: keep it None


if __name__ == "__main__":
    main()
