"""`fai-rl-train`: recipe -> validated once -> (backend, algorithm) module -> artefacts in output_dir.

    fai-rl-train --recipe recipes/quickstart/sft.yaml [--num-gpus N] [--nohup] [--dry-run] [--resume [PATH]] [k=v ...]
    fai-rl-train ... --num-gpus 8 --num-nodes 2 --node-rank {0,1} --main-process-ip 10.0.0.1   # on each node

Any FaiRLError (recipe, data, environment) is printed without a traceback and exits 2; nothing is written to
output_dir before the recipe, the data and the resume point have all been checked.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from fai_rl.cli.launch import LAUNCHED_ENV, Nodes, detach, plan_launch, relaunch
from fai_rl.cli import report_errors



def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="fai-rl-train",
        description="Train a model from a YAML recipe (sft, dpo, ppo, grpo, gspo; local or Tinker).",
        epilog="Overrides: key.sub=value with YAML values, e.g. training.learning_rate=5e-5 "
        "data.datasets[0].name=my/data model.lora_target_modules=[q_proj,v_proj]",
    )
    p.add_argument("--recipe", required=True, help="path of the recipe YAML")
    p.add_argument("--num-gpus", type=int, default=None, help="GPUs to use on this node: 0 = CPU, 1 = this process, "
                   "N > 1 = accelerate launch (DDP, or DeepSpeed with training.deepspeed_config). Default: 1 if any, "
                   "else CPU.")
    p.add_argument("--num-processes", type=int, default=None, help="with --num-gpus 0: this many CPU processes "
                   "(gloo), to try a multi-process launch without GPUs; on GPUs it is always --num-gpus")
    nodes = p.add_argument_group("several nodes (run the same command on each, changing only --node-rank)")
    nodes.add_argument("--num-nodes", type=int, default=1, help="machines taking part (default 1)")
    nodes.add_argument("--node-rank", type=int, default=0, help="this machine's index: 0 on the main node")
    nodes.add_argument("--main-process-ip", default=None, help="address of the --node-rank 0 machine")
    nodes.add_argument("--main-process-port", type=int, default=None, help="its port (default 29500 with several "
                       "nodes; a free one on one node)")
    p.add_argument("--nohup", action="store_true", help="run detached; log and pid file under output_dir/logs/")
    p.add_argument("--dry-run", action="store_true", help="check recipe and data, show examples and the launch; "
                   "train nothing")
    p.add_argument("--verbose", action="store_true", help="with --dry-run: print the whole resolved recipe too (a run "
                   "writes it to output_dir/recipe.resolved.yaml)")
    p.add_argument("--resume", nargs="?", const="latest", default=None, metavar="PATH",
                   help="continue from the latest checkpoint in output_dir, or from checkpoint dir PATH")
    p.add_argument("overrides", nargs="*", metavar="key.sub=value", help="recipe overrides (CLI > recipe > defaults)")
    return p


def parse_args(argv: list[str]) -> argparse.Namespace:
    args = build_parser().parse_intermixed_args(argv)  # overrides may come before and after the flags
    if args.resume is not None and "=" in args.resume:  # `--resume a.b=c`: the override is not a path
        args.overrides.insert(0, args.resume)
        args.resume = "latest"
    return args


def main(argv: list[str] | None = None) -> int:
    """Entry point of fai-rl-train; returns the exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    from fai_rl.runlog import stop_log

    try:
        return report_errors("fai-rl-train", lambda: _run(args, argv), "continue later with --resume")
    finally:
        stop_log()  # after report_errors, so a run's closing error is in its log too


def _run(args: argparse.Namespace, argv: list[str]) -> int:
    from fai_rl.backends import check_dispatch
    from fai_rl.config import load_recipe
    from fai_rl.config.load_pipeline import is_pipeline_recipe
    from fai_rl.rewards import check_rewards
    from fai_rl.s3 import check_s3

    launched = os.environ.get(LAUNCHED_ENV) == "1"
    if not launched and is_pipeline_recipe(args.recipe):  # `stages:`: SFT -> RL -> export, each a run of _run
        from fai_rl.cli.pipeline import run_pipeline

        return run_pipeline(args, argv, _run)
    recipe = load_recipe(args.recipe, args.overrides, extra_rules=[check_dispatch, check_rewards, check_s3],
                         processes=int(os.environ.get("WORLD_SIZE", 1)) if launched else _world_size(args))
    lock = _lock_output_dir(recipe, args)
    try:
        return _run_recipe(args, argv, recipe, launched)
    finally:
        if lock is not None:
            lock.release()


def _lock_output_dir(recipe, args: argparse.Namespace):
    """One live run per output_dir (fai_rl.cli.runlock): the launching process holds the lock, a --nohup parent only
    looks, a dry run neither; ranks other than 0 and nodes other than the main one belong to a run that holds it."""
    from fai_rl.cli.runlock import RunLock, check_output_path

    check_output_path(recipe.training.output_dir)
    if args.dry_run or args.node_rank or int(os.environ.get("RANK", "0")) != 0:
        return None
    lock = RunLock(recipe.training.output_dir)
    if args.nohup:
        lock.check()  # the detached child takes it
        return None
    return lock.acquire()


def _run_recipe(args: argparse.Namespace, argv: list[str], recipe, launched: bool) -> int:
    from fai_rl.artifacts import check_output_dir
    from fai_rl.backends import algorithm_module
    from fai_rl.config import recipe_to_yaml
    from fai_rl.config.load import recipe_notes
    from fai_rl.runlog import start_log

    check_output_dir(recipe, resuming=args.resume is not None)
    if not (args.dry_run or args.nohup):  # the console, copied into output_dir/logs/ once the run starts
        start_log(recipe.training.output_dir)
    if not launched:  # the launching process says it once for all ranks
        for note in recipe_notes(recipe):
            print(f"note: {note}", flush=True)
    child_argv = [a for a in argv if a != "--nohup"]
    nodes = Nodes(args.num_nodes, args.node_rank, args.main_process_ip, args.main_process_port)
    plan = None if launched else plan_launch(recipe, args.num_gpus, child_argv, args.num_processes, nodes,
                                              dry_run=args.dry_run)

    if args.dry_run:
        from fai_rl.cli.header import run_header

        module = algorithm_module(recipe)
        prepared = module.prepare(recipe, args.resume)
        print("recipe OK\n\n" + run_header(recipe, prepared, plan.world_size if plan else _world_size(args)) + "\n")
        if args.verbose:
            print("# resolved recipe (what recipe.resolved.yaml will hold)\n" + recipe_to_yaml(recipe))
        print("# data\n" + module.describe(recipe, prepared) + "\n")
        print(f"# launch\n{plan.describe() if plan else 'inside accelerate launch'}\n\ndry run: nothing trained.")
        return 0
    if args.nohup:
        pid, log, pid_file = detach(recipe, child_argv)
        out = recipe.training.output_dir
        print(f"started in the background (pid {pid})\n  log:    {log}\n  list:   fai-rl-runs list {Path(out).parent}\n"
              f"  follow: fai-rl-runs follow {out}    # or: tail -f {log}\n"
              f"  stop:   fai-rl-runs stop {out}      # a checkpoint first; or: kill {pid} (the same), "
              f"pid in {pid_file}")
        return 0
    if plan is not None and plan.command is not None:
        return relaunch(plan, recipe, ["fai-rl-train", *child_argv])
    if plan is not None:
        os.environ.update(plan.env)  # before torch sees CUDA
        print(f"fai-rl-train: {plan.describe()}", flush=True)
    return _train(recipe, args.resume, algorithm_module(recipe), ["fai-rl-train", *child_argv])


def _world_size(args: argparse.Namespace) -> int:
    """Processes over all nodes that the flags ask for (the launch checks that the host can give them)."""
    per_node = args.num_gpus if args.num_gpus else args.num_processes or 1
    return max(1, per_node) * max(1, args.num_nodes)


def _train(recipe, resume: str | None, module, command: list[str]) -> int:
    from fai_rl.artifacts import RunDir
    from fai_rl.cli.header import run_header
    from fai_rl.export.card import write_run_card
    from fai_rl.runlog import run_started
    from fai_rl.tracking import finish_wandb, start_wandb

    from fai_rl.progress import RunStopped, install_stop_handlers, say
    from fai_rl.tensorboard_log import check_tensorboard

    check_tensorboard(recipe.tensorboard.enabled)
    say("reading and tokenising the data")
    prepared = module.prepare(recipe, resume)  # data and resume point checked before anything is written
    run = RunDir(recipe.training.output_dir)
    main_process = int(os.environ.get("RANK", "0")) == 0
    if main_process:
        run.start(recipe, resume_step=prepared.resume.step if prepared.resume else None)
        run_started()
        print(run_header(recipe, prepared, int(os.environ.get("WORLD_SIZE", "1"))), flush=True)
    restore_signals = install_stop_handlers()  # SIGTERM, Ctrl-C, output_dir/STOP: checkpoint, then stop
    wandb_run = start_wandb(recipe, run.path) if main_process else None
    say("loading the model" + (" on the Tinker service" if recipe.training.backend == "tinker" else ""))
    try:
        summary = module.train(recipe, prepared, run)
    except RunStopped as stop:
        if main_process:
            run.progress.finish("stopped")
            run.plot_curves(recipe.training.algorithm)
            again = command if "--resume" in command else [*command, "--resume"]
            print(f"stopped at step {stop.step} on request; checkpoint: {stop.checkpoint}\n"
                  f"continue with: {' '.join(again)}", flush=True)
        _close_process_group()
        return 0
    except BaseException:
        if main_process:
            run.progress.finish("failed")
        raise
    finally:
        restore_signals()
        finish_wandb(wandb_run)
        if run.tensorboard is not None:
            run.tensorboard.close()
    if main_process:
        run.progress.finish("finished")
        run.plot_curves(recipe.training.algorithm)
        write_run_card(run.path, command)  # after the trainer: TRL's own card (run_trainer stops it) never replaces it
        print(format_summary(summary, run.path, recipe.training.algorithm))
    _close_process_group()
    return 0


def _close_process_group() -> None:
    """End a multi-process run's process group before exit: left to the interpreter's teardown, gloo's threads were
    sometimes destroyed while running, aborting a rank ("terminate called without an active exception") after the
    run had finished and saved everything."""
    import sys

    dist = sys.modules.get("torch.distributed")
    if dist is not None and dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def format_summary(summary: dict, output_dir, algorithm: str) -> str:
    """The end-of-run table: the algorithm's headline metrics before and after, then run-level numbers."""
    from fai_rl.artifacts import headline_metrics
    from fai_rl.export.card import change

    rows = [("metric", "first", "last", "change")]
    for key in headline_metrics(algorithm, summary["metrics"]):
        m = summary["metrics"][key]
        rows.append((key, f"{m['first']:.4f}", f"{m['last']:.4f}", change(key, m["first"], m["last"])))
    width = [max(len(r[i]) for r in rows) for i in range(4)]
    table = "\n".join("  ".join(c.ljust(w) for c, w in zip(r, width, strict=True)) for r in rows)
    extra = (f"steps {summary.get('global_step')}  train time {summary.get('train_runtime_s')} s  "
             f"tokens/s {summary.get('tokens_per_s')}  wall {summary.get('wall_time_s')} s")
    return (f"\n{table}\n{extra}\nartefacts in {output_dir}: final/, metrics.jsonl, summary.json, curves.png, "
            "README.md")


if __name__ == "__main__":
    sys.exit(main())
