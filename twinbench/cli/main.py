"""The `twinbench` command: parses its arguments and hands each subcommand to its module."""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from collections.abc import Callable

import grpc

from twinbench.cli import experiments, jobs, local
from twinbench.cli.parser import parser
from twinbench.client.stack import services
from twinbench.config import Settings, frameworks_of, load_settings
from twinbench.errors import TwinbenchError
from twinbench.rpc.channel import Client, is_serving

# Commands that talk to the gateway: each starts the services for its run when none answers.
THROUGH_THE_GATEWAY: dict[str, Callable[[Client, argparse.Namespace], int]] = {
    "train": jobs.cmd_train,
    "jobs": jobs.cmd_jobs,
    "cancel": jobs.cmd_cancel,
    "models": jobs.cmd_models,
    "infer": jobs.cmd_infer,
    "bench training": experiments.cmd_bench_training,
}
# Commands that start what they need themselves (or need no services at all).
ON_THEIR_OWN: dict[str, Callable[[Settings, argparse.Namespace], int]] = {
    "up": local.cmd_up,
    "data": local.cmd_data,
    "compare": experiments.cmd_compare,
    "sweep": experiments.cmd_sweep,
    "parity": experiments.cmd_parity,
    "code": experiments.cmd_code,
    "bench serving": experiments.cmd_bench,
    # Lockstep pairs run both arms' workers here; sequential jobs, its fallback, start services.
    "bench training --lockstep": experiments.cmd_bench_lockstep,
    # The harness against a bare loop: lockstep pairs here, no services.
    "bench training --reference": experiments.cmd_bench_reference,
}

__all__ = ["main", "parser"]


def command_name(args: argparse.Namespace) -> str:
    if args.command != "bench":
        return args.command
    if getattr(args, "reference", None):
        return f"bench {args.bench_command} --reference"
    lockstep = " --lockstep" if getattr(args, "lockstep", False) else ""
    return f"bench {args.bench_command}{lockstep}"


def needed_frameworks(args: argparse.Namespace) -> tuple[str, ...] | None:
    """The trainers a command's local stack must run, when it starts one; None: the settings'."""
    framework = getattr(args, "framework", None)
    if args.command == "train" and framework:
        return frameworks_of(framework)
    if args.command == "bench" and getattr(args, "frameworks", None):
        return tuple(f.strip() for f in args.frameworks.split(","))
    return None


def through_the_gateway(settings: Settings, args: argparse.Namespace) -> int:
    handler = THROUGH_THE_GATEWAY[command_name(args)]
    if getattr(args, "detach", False) and not is_serving(args.gateway, tls_ca=settings.tls_ca):
        # Services started for this command stop with it: a queued job would be interrupted.
        raise SystemExit(
            f"--detach needs running services; none answers at {args.gateway}:"
            " start them with `twinbench up`"
        )
    with services(settings, args.gateway, needed_frameworks(args)) as (address, _):
        client = Client(address, settings)
        try:
            return handler(client, args)
        finally:
            client.close()


def _exit_on_sigterm() -> None:
    """SIGTERM (a process manager's stop, `kill`) ends a command as Ctrl-C does: through its
    finally blocks, so that the services it started stop with it instead of staying up.
    `twinbench up` sets its own handler; a handler someone else set is left alone."""
    if threading.current_thread() is not threading.main_thread():
        return  # signal handlers belong to the main thread
    if signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
        signal.signal(signal.SIGTERM, lambda signum, _frame: sys.exit(128 + signum))


def main(argv: list[str] | None = None) -> int:
    _exit_on_sigterm()
    argv = sys.argv[1:] if argv is None else argv
    args = parser().parse_args(argv)
    args.argv = argv
    settings = load_settings()
    name = command_name(args)
    try:
        if name in ON_THEIR_OWN:
            return ON_THEIR_OWN[name](settings, args)
        return through_the_gateway(settings, args)
    except grpc.RpcError as exc:
        print(f"twinbench: {exc.code().name}: {exc.details()}", file=sys.stderr)
        return 2
    except TwinbenchError as exc:
        print(f"twinbench: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
