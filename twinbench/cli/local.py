"""`twinbench up` (the services on this machine, until Ctrl-C) and `twinbench data` (downloads)."""

from __future__ import annotations

import argparse
import signal
import threading
from pathlib import Path

from twinbench.client.stack import LocalStack, installed_frameworks, trainer_service
from twinbench.config import Settings, parse_frameworks

INSTALL_JAX = "pip install -r requirements/jax_trainer.txt"


def cmd_data(settings: Settings, args: argparse.Namespace) -> int:
    from twinbench.data.download import download

    root = Path(args.dir).resolve() if args.dir else settings.data
    for line in download(args.name, root):
        print(line)
    print(f"{args.name} is ready in {root / args.name}")
    return 0


def cmd_up(settings: Settings, args: argparse.Namespace) -> int:
    installed = installed_frameworks()
    if args.frameworks:
        frameworks = parse_frameworks(args.frameworks, "--frameworks")
        missing = [fw for fw in frameworks if fw not in installed]
        if missing:
            raise SystemExit(f"{', '.join(missing)} is not installed here ({INSTALL_JAX})")
    else:
        frameworks = installed
        if "jax" not in installed:
            print(f"jax is not installed: starting the torch and tf trainers only ({INSTALL_JAX})")
    with LocalStack(settings, frameworks=frameworks) as stack:
        trainers = ", ".join(
            f"{fw} trainer {stack.address(trainer_service(fw))}" for fw in frameworks
        )
        print(
            f"gateway {stack.gateway_address} ({trainers}); state and logs in {settings.home};"
            " Ctrl-C stops"
        )
        stopped = threading.Event()
        signal.signal(signal.SIGTERM, lambda *_: stopped.set())
        try:
            while not stopped.wait(1.0):
                for name, proc in stack.procs.items():
                    if proc.poll() is not None:
                        print(f"{name} exited ({proc.returncode}):\n{stack.log_tail(name)}")
                        return 1
        except KeyboardInterrupt:
            pass
    return 0
