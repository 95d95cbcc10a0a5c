"""``pinsage sweep SWEEP.yaml``: run a wandb sweep file locally, without a wandb server.

The file is the one ``wandb sweep`` takes (``method: grid | random | bayes``, ``metric``,
``parameters``, ``command``, optional ``run_cap`` and ``early_terminate``). Each trial is the
sweep's ``command`` (``pinsage fit --config ... ${args}``) run as a child process with the
trial's values as ``--key=value`` overrides, exactly what ``wandb agent`` would run. Optuna
picks the values: ``GridSampler`` (grid), ``RandomSampler`` (random), ``TPESampler`` (bayes),
and prunes clearly bad trials on the validation metric each epoch (``MedianPruner``, or
``HyperbandPruner`` when the file has ``early_terminate: {type: hyperband}``).

Everything goes to ``--out`` (default ``outputs/sweeps/<name>``, name = the file's ``name`` or
its stem):

* ``trials/NNN/``: each trial's run (``--trainer.default_root_dir``): checkpoints, its offline
  wandb run (group = the sweep name, ``wandb sync trials/*/wandb/offline-run-*`` shows the sweep
  in a dashboard), ``epochs.jsonl`` (validation metrics per epoch) and ``fit.log`` (its output);
* ``trials.csv``: one row per finished trial (state, metric, parameters, time, folder);
* ``best-config.yaml``: the full resolved fit config of the best trial (``pinsage fit --config
  best-config.yaml`` retrains it, into ``<out>/best``);
* ``sweep.json`` (what ``pinsage report`` reads) and ``optuna.db`` (the study).

Resumable: the study lives in ``optuna.db``; running the same command again continues with the
trials not yet done (a trial cut short by a kill is run again with its values).
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import math
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

from .sweep_file import (DONE_STATES, Sweep, SweepError, expand_command, format_value,  # noqa: F401
                         load_sweep, trial_args)

# ----------------------------------------------------------------------------------------------
# the fit command of a trial
# ----------------------------------------------------------------------------------------------
_CHILD = ("import ctypes, os, signal, sys\n"
          "try:\n"
          "    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # die with the sweep (PR_SET_PDEATHSIG)\n"
          "except Exception:\n"
          "    pass\n"
          "if os.getppid() != int(sys.argv[1]):\n"
          "    sys.exit(143)\n"
          "sys.argv = ['pinsage'] + sys.argv[2:]\n"
          "from app.cli import main\n"
          "sys.exit(main())\n")


def resolve_fit_config(argv: List[str]):
    """Parse ``pinsage <argv>`` (a fit command) without running it: ``(parser, config)``."""
    from datamodules.datamodule import PinSageDataModule
    from models.module import PinSageModule

    from .lightning_cli import PinSageCLI

    class ParseOnly(PinSageCLI):
        def instantiate_classes(self):
            pass

        def _run_subcommand(self, subcommand):
            pass

    err = io.StringIO()
    try:
        from contextlib import redirect_stderr

        with redirect_stderr(err):
            cli = ParseOnly(PinSageModule, PinSageDataModule, args=argv,
                            trainer_defaults={"use_distributed_sampler": False})
    except SystemExit:
        msg = [ln for ln in err.getvalue().splitlines() if "error:" in ln]
        raise SweepError(f"the trial command `pinsage {' '.join(argv)}` does not parse: "
                         f"{msg[-1].split('error:', 1)[1].strip() if msg else err.getvalue().strip()[-300:]}") from None
    return cli._parser(cli.subcommand), cli.config[cli.subcommand]


def _is_wandb_logger(cfg) -> bool:
    lg = cfg.trainer.get("logger")
    items = lg if isinstance(lg, list) else [lg]
    return any("WandbLogger" in str(getattr(x, "class_path", "") or "") for x in items if x)


# ----------------------------------------------------------------------------------------------
# running
# ----------------------------------------------------------------------------------------------
class TrialFailed(Exception):
    pass


class _Interrupted(KeyboardInterrupt):
    """SIGTERM, handled like Ctrl-C."""


def _read_epochs(path: Path, offset: int) -> Tuple[List[dict], int]:
    if not path.is_file():
        return [], offset
    with open(path) as f:
        f.seek(offset)
        data = f.read()
    lines = data.split("\n")
    complete, rest = lines[:-1], lines[-1]
    recs = [json.loads(ln) for ln in complete if ln.strip()]
    return recs, offset + len(data) - len(rest)


class SweepRunner:
    def __init__(self, sweep: Sweep, out: Path, trials: Optional[int], jobs: int, extra: List[str],
                 prune: bool = True, seed: int = 0, quiet: bool = False, poll_s: float = 0.5,
                 figures: bool = False):
        self.sweep, self.out, self.jobs, self.extra = sweep, out, jobs, list(extra)
        self.figures = figures
        # how a trial's `pinsage fit` is started (argv of the fit follows)
        self.child = [sys.executable, "-c", _CHILD, str(os.getpid())]
        self.prune, self.seed, self.quiet, self.poll_s = prune, seed, quiet, poll_s
        if trials is None:
            trials = sweep.run_cap
        if trials is None and sweep.method == "grid":
            trials = sweep.grid_size()
        if trials is None:
            raise SweepError(f"method {sweep.method} needs a number of trials: --trials N (or run_cap in the sweep file)")
        if sweep.method == "grid":
            trials = min(trials, sweep.grid_size())
        self.n_trials = int(trials)
        self._csv_lock = threading.Lock()
        self._procs: Dict[int, subprocess.Popen] = {}
        # validate the base command once, at the user's edge: config + extras + one trial's values
        self.base_argv = expand_command(sweep, self.extra)
        first = {p.name: (p.values[0] if p.values else (p.low if p.kind != "log_uniform" else math.exp(p.low)))
                 for p in sweep.params}
        if any(p.kind == "int_uniform" for p in sweep.params):
            first.update({p.name: int(p.low) for p in sweep.params if p.kind == "int_uniform"})
        _, cfg = resolve_fit_config(expand_command(sweep, self.extra + trial_args(first)))
        self.wandb = _is_wandb_logger(cfg)

    def log(self, msg: str) -> None:
        if not self.quiet:
            print(f"[pinsage sweep] {msg}", file=sys.stderr, flush=True)

    # -- optuna ----------------------------------------------------------------------------------
    def _sampler(self):
        import optuna

        if self.sweep.method == "grid":
            return optuna.samplers.GridSampler({p.name: p.grid() for p in self.sweep.swept}, seed=self.seed)
        if self.sweep.method == "random":
            return optuna.samplers.RandomSampler(seed=self.seed)
        return optuna.samplers.TPESampler(seed=self.seed, n_startup_trials=min(5, max(self.n_trials // 3, 1)))

    def _pruner(self):
        import optuna

        if not self.prune:
            return optuna.pruners.NopPruner()
        et = self.sweep.early_terminate
        if et:
            return optuna.pruners.HyperbandPruner(min_resource=int(et.get("min_iter", 1)),
                                                  reduction_factor=int(et.get("eta", 3)))
        return optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=1)

    def _study(self):
        import optuna

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        self.storage = optuna.storages.RDBStorage(f"sqlite:///{self.out / 'optuna.db'}")
        study = optuna.create_study(study_name=self.sweep.name, storage=self.storage, load_if_exists=True,
                                    direction=self.sweep.goal, sampler=self._sampler(), pruner=self._pruner())
        fp = {"sweep": self.sweep.fingerprint(), "extra": self.extra}
        have = study.user_attrs.get("fingerprint")
        if have is None:
            study.set_user_attr("fingerprint", fp)
        elif have != fp:
            raise SweepError(f"{self.out} holds a sweep started from another sweep file or other overrides "
                             f"(stored {have}, now {fp}); pass another --out")
        return study

    def _recover(self, study) -> None:
        """Trials left RUNNING by a killed sweep (we hold the lock: nobody runs them) fail as
        interrupted, and every interrupted trial is queued again with its values (for grid too:
        Optuna's GridSampler counts a failed point as visited)."""
        from optuna.trial import TrialState

        for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            self.storage.set_trial_user_attr(t._trial_id, "interrupted", True)
            self.storage.set_trial_state_values(t._trial_id, state=TrialState.FAIL)
        requeued = set(study.user_attrs.get("requeued", []))
        for t in study.get_trials(deepcopy=False, states=(TrialState.FAIL,)):
            if t.user_attrs.get("interrupted") and t.number not in requeued:
                study.enqueue_trial(t.params, skip_if_exists=False)
                requeued.add(t.number)
                self.log(f"trial {t.number} was interrupted: running it again")
        study.set_user_attr("requeued", sorted(requeued))

    def done_trials(self, study) -> List[Any]:
        return [t for t in study.get_trials(deepcopy=False)
                if t.state.name in DONE_STATES and not t.user_attrs.get("interrupted")]

    # -- one trial -------------------------------------------------------------------------------
    def _objective(self, trial):
        import optuna

        params = {p.name: p.suggest(trial) for p in self.sweep.params}
        tdir = self.out / "trials" / f"{trial.number:03d}"
        tdir.mkdir(parents=True, exist_ok=True)
        epochs_file = tdir / "epochs.jsonl"
        injected = [f"--trainer.default_root_dir={tdir}", f"--metrics_log.path={epochs_file}"]
        if not self.figures:
            injected.append("--figures.enabled=false")
        env = dict(os.environ)
        if self.wandb:
            injected += [f"--trainer.logger.init_args.save_dir={tdir}",
                         f"--trainer.logger.init_args.name={self.sweep.name}-{trial.number:03d}"]
            env["WANDB_RUN_GROUP"] = self.sweep.name
            env["WANDB_JOB_TYPE"] = "sweep-trial"
        argv = expand_command(self.sweep, self.extra + injected + trial_args(params))
        trial.set_user_attr("values", json.loads(json.dumps(params, default=str)))
        trial.set_user_attr("trial_dir", str(tdir))
        trial.set_user_attr("command", "pinsage " + " ".join(argv))
        short = ", ".join(f"{k.split('.')[-1]}={format_value(v)}" for k, v in params.items()
                          if any(p.name == k and p.kind != "constant" for p in self.sweep.params))
        self.log(f"trial {trial.number} started: {short}")
        t0 = time.time()
        metric, curve, offset, pruned = self.sweep.metric, [], 0, False
        with open(tdir / "fit.log", "ab") as logf:
            proc = subprocess.Popen([*self.child, *argv], stdout=logf,
                                    stderr=subprocess.STDOUT, env=env, cwd=os.getcwd())
            self._procs[trial.number] = proc
            try:
                while True:
                    rc = proc.poll()
                    recs, offset = _read_epochs(epochs_file, offset)
                    for r in recs:
                        if metric in r:
                            curve.append(float(r[metric]))
                            trial.report(curve[-1], step=len(curve))
                            if trial.should_prune():
                                pruned = True
                    if pruned and rc is None:
                        _stop(proc)
                        rc = proc.returncode
                    if rc is not None:
                        break
                    time.sleep(self.poll_s)
            except BaseException:
                _stop(proc)
                trial.set_user_attr("interrupted", True)
                raise
            finally:
                self._procs.pop(trial.number, None)
        secs = time.time() - t0
        trial.set_user_attr("seconds", round(secs, 1))
        trial.set_user_attr("curve", curve)
        trial.set_user_attr("wandb_run", next((str(p) for p in sorted(tdir.glob("wandb/offline-run-*"))), ""))
        if pruned:
            self.log(f"trial {trial.number} pruned after {len(curve)} epochs: {metric}={curve[-1]:.4f}")
            raise optuna.TrialPruned()
        if rc != 0:
            tail = (tdir / "fit.log").read_text(errors="replace").strip().splitlines()[-1:]
            trial.set_user_attr("error", f"exit {rc}: {tail[0] if tail else ''}"[:500])
            self.log(f"trial {trial.number} failed (exit {rc}); see {tdir / 'fit.log'}")
            raise TrialFailed(rc)
        if not curve:
            trial.set_user_attr("error", f"{metric} was never logged")
            self.log(f"trial {trial.number} failed: {metric} was never logged (see {epochs_file})")
            raise TrialFailed(metric)
        best = max(curve) if self.sweep.goal == "maximize" else min(curve)
        trial.set_user_attr("best_value", best)
        self.log(f"trial {trial.number} done in {secs:.0f}s: {metric}={curve[-1]:.4f} (best epoch {best:.4f})")
        return curve[-1]

    # -- outputs ---------------------------------------------------------------------------------
    def write_outputs(self, study) -> Optional[Path]:
        with self._csv_lock:
            rows = []
            names = [p.name for p in self.sweep.params]
            for t in sorted(self.done_trials(study), key=lambda t: t.number):
                vals = t.user_attrs.get("values", {})
                curve = t.user_attrs.get("curve", [])
                value = t.value if t.value is not None else (curve[-1] if curve and t.state.name == "PRUNED" else "")
                rows.append({"trial": t.number, "state": t.state.name.lower(), "value": value,
                             "best_value": t.user_attrs.get("best_value", ""),
                             "epochs": len(t.user_attrs.get("curve", [])),
                             **{n: format_value(vals.get(n)) for n in names},
                             "seconds": t.user_attrs.get("seconds", ""), "trial_dir": t.user_attrs.get("trial_dir", ""),
                             "wandb_run": t.user_attrs.get("wandb_run", ""), "error": t.user_attrs.get("error", "")})
            # value: the metric at the trial's last epoch (where it was stopped, for a pruned one)
            cols = ["trial", "state", "value", "best_value", "epochs", *names, "seconds", "trial_dir", "wandb_run",
                    "error"]
            buf = io.StringIO()
            w = csv.DictWriter(buf, fieldnames=cols)
            w.writeheader()
            w.writerows(rows)
            _atomic_write(self.out / "trials.csv", buf.getvalue())
            info = {"name": self.sweep.name, "sweep_file": str(self.sweep.path), "method": self.sweep.method,
                    "metric": self.sweep.metric, "goal": self.sweep.goal, "trials": self.n_trials,
                    "parameters": {p.name: {"kind": p.kind, "log": p.log_scale} for p in self.sweep.swept},
                    "extra_args": self.extra}
            complete = [t for t in self.done_trials(study) if t.state.name == "COMPLETE" and t.value is not None]
            best_path = None
            if complete:
                best = (max if self.sweep.goal == "maximize" else min)(complete, key=lambda t: t.value)
                info["best"] = {"trial": best.number, "value": best.value, "values": best.user_attrs.get("values")}
                best_path = self._write_best_config(best)
            _atomic_write(self.out / "sweep.json", json.dumps(info, indent=1, default=str))
            return best_path

    def _write_best_config(self, best) -> Path:
        vals = best.user_attrs.get("values", {})
        bdir = self.out / "best"
        pinned = [f"--trainer.default_root_dir={bdir}"]
        if self.wandb:
            pinned += [f"--trainer.logger.init_args.save_dir={bdir}",
                       f"--trainer.logger.init_args.name={self.sweep.name}-best"]
        argv = expand_command(self.sweep, self.extra + pinned + trial_args(vals))
        parser, cfg = resolve_fit_config(argv)
        text = parser.dump(cfg, skip_none=False)
        head = (f"# best trial {best.number} of sweep {self.sweep.name!r} ({self.sweep.path}): "
                f"{self.sweep.metric}={best.value:.6g}\n"
                f"# values: {json.dumps(vals, default=str)}\n"
                f"# retrain: pinsage fit --config {self.out / 'best-config.yaml'}\n")
        path = self.out / "best-config.yaml"
        _atomic_write(path, head + text)
        return path

    # -- main ------------------------------------------------------------------------------------
    def run(self) -> int:
        self.out.mkdir(parents=True, exist_ok=True)
        lock = _lock(self.out)
        try:
            study = self._study()
            self._recover(study)
            done = len(self.done_trials(study))
            left = max(self.n_trials - done, 0)
            self.log(f"{self.sweep.name}: {self.sweep.method} over {[p.name for p in self.sweep.swept]}, "
                     f"{self.n_trials} trials ({done} done, {left} to run), {self.jobs} at a time -> {self.out}")

            def after(study, trial):
                self.write_outputs(study)

            old = signal.signal(signal.SIGTERM, _raise_interrupt) if threading.current_thread() is threading.main_thread() else None
            try:
                if left:
                    study.optimize(self._objective, n_trials=left, n_jobs=self.jobs, catch=(TrialFailed,),
                                   callbacks=[after], gc_after_trial=False)
            except (KeyboardInterrupt, _Interrupted):
                for p in list(self._procs.values()):
                    _stop(p)
                self.write_outputs(study)
                self.log("interrupted: run the same command again to continue")
                return 130
            finally:
                if old is not None:
                    signal.signal(signal.SIGTERM, old)
            best = self.write_outputs(study)
            trials = self.done_trials(study)
            states = {s: sum(t.state.name == s for t in trials) for s in DONE_STATES}
            self.log(f"finished: {states['COMPLETE']} complete, {states['PRUNED']} pruned, {states['FAIL']} failed; "
                     f"{self.out / 'trials.csv'}" + (f", best config {best}" if best else ""))
            if best is None:
                print(f"pinsage sweep: error: no trial completed (see {self.out / 'trials'}/*/fit.log)", file=sys.stderr)
                return 1
            summary = json.loads((self.out / "sweep.json").read_text())["best"]
            print(json.dumps({"sweep": str(self.out), "trials_csv": str(self.out / "trials.csv"),
                              "best_config": str(best), "best": summary}, default=str))
            return 0
        finally:
            lock.close()


def _raise_interrupt(signum, frame):
    raise _Interrupted()


def _stop(proc: subprocess.Popen, grace: float = 20.0) -> None:
    if proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def _lock(out: Path):
    import fcntl

    f = open(out / ".sweep.lock", "a+")
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        f.close()
        raise SweepError(f"another pinsage sweep is running on {out}; wait for it or pass another --out") from None
    return f


def _atomic_write(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        mask = os.umask(0)
        os.umask(mask)
        os.chmod(tmp, 0o666 & ~mask)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


# ----------------------------------------------------------------------------------------------
# command line
# ----------------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="pinsage sweep",
        description="Run a wandb sweep file locally (Optuna: grid / random / bayes=TPE, median pruning); "
                    "arguments after `--` are extra `pinsage fit` overrides for every trial.")
    p.add_argument("sweep_file", help="the sweep YAML (the one `wandb sweep` takes), e.g. configs/sweeps/movielens-100k.yaml")
    p.add_argument("--trials", type=int, default=None, help="number of trials (default: run_cap, or the grid size)")
    p.add_argument("--jobs", type=int, default=1, help="trials run at the same time (default 1)")
    p.add_argument("--out", default=None, help="output folder (default outputs/sweeps/<name>)")
    p.add_argument("--no-prune", action="store_true", help="never stop a trial early")
    p.add_argument("--seed", type=int, default=0, help="seed of the sampler (default 0)")
    p.add_argument("--figures", action="store_true",
                   help="log the report figures of every trial to wandb at the end of its fit (off: it costs time)")
    p.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    return p


def main(argv: Optional[List[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    extra: List[str] = []
    if "--" in argv:
        i = argv.index("--")
        argv, extra = argv[:i], argv[i + 1:]
    args = build_parser().parse_args(argv)
    try:
        if args.trials is not None and args.trials < 1:
            raise SweepError(f"--trials must be >= 1, got {args.trials}")
        if args.jobs < 1:
            raise SweepError(f"--jobs must be >= 1, got {args.jobs}")
        try:
            import optuna  # noqa: F401
        except ImportError:
            raise SweepError("optuna is not installed: pip install -e '.[tools]'") from None
        sweep = load_sweep(args.sweep_file)
        out = Path(args.out or Path("outputs") / "sweeps" / sweep.name)
        runner = SweepRunner(sweep, out, args.trials, args.jobs, extra, prune=not args.no_prune, seed=args.seed,
                             quiet=args.quiet, figures=args.figures)
        return runner.run()
    except SweepError as e:
        print(f"pinsage sweep: error: {e}", file=sys.stderr)
        return 2
