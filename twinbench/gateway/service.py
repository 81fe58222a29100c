"""The gateway service: routes training by framework and inference by model name, behind its front."""

import sys
import threading

from twinbench.api import trainer_pb2_grpc
from twinbench.config import load_settings
from twinbench.gateway.auth import BearerTokenInterceptor
from twinbench.gateway.front_process import Front
from twinbench.gateway.router import Gateway
from twinbench.gateway.servicer import (
    GatewayInferenceServicer,
    GatewayTrainerServicer,
    inference_handler,
)
from twinbench.rpc.server import (
    configure_logging,
    create_server,
    enable_reflection,
    run_until_signalled,
    set_serving,
    write_port_file,
)
from twinbench.trainer.metrics import FrontCollector, serve_metrics

GRACE_S = 10.0


def main() -> None:
    configure_logging()
    settings = load_settings()
    gateway = Gateway(settings)
    interceptors = (
        (BearerTokenInterceptor(settings.token, settings.inference_open),) if settings.token else ()
    )
    if bool(settings.tls_cert) != bool(settings.tls_key):
        raise SystemExit("set both TWINBENCH_TLS_CERT and TWINBENCH_TLS_KEY, or neither")
    tls = (settings.tls_cert, settings.tls_key) if settings.tls_cert and settings.tls_key else None
    front_binary = settings.gateway_front_program()
    public = settings.listen_address("gateway")
    # With the front, this process is reached only through it, on loopback; TLS is the front's.
    server, port, health = create_server(
        "127.0.0.1:0" if front_binary else public,
        settings,
        interceptors=interceptors,
        tls=None if front_binary else tls,
    )
    trainer_pb2_grpc.add_TrainerServicer_to_server(GatewayTrainerServicer(gateway), server)
    server.add_generic_rpc_handlers((inference_handler(GatewayInferenceServicer(gateway)),))
    enable_reflection(server)  # through the front too: it relays what it does not serve
    server.start()
    front = Front(front_binary, settings, control_port=port) if front_binary else None
    if front:
        try:
            port = front.start(public)
        except SystemExit:
            server.stop(None)
            raise
    metrics_port = serve_metrics(
        settings.metrics_listen_address("gateway"),
        gateway.requests,
        FrontCollector(lambda: front.metrics_url if front else None),
    )
    write_port_file(settings.home / "run" / "gateway.metrics.port", metrics_port)
    stop = threading.Event()

    def become_ready() -> None:
        # Ready once both trainers answer; afterwards a trainer going down makes its own models
        # UNAVAILABLE but leaves the gateway serving the other trainer's.
        gateway.wait_ready(stop)
        if not stop.is_set():
            set_serving(health, True)

    threading.Thread(target=become_ready, name="gateway-ready", daemon=True).start()
    try:
        run_until_signalled(server, health, "gateway", port, settings, stop.set, GRACE_S)
    finally:
        # After this process's own calls have drained, streams relayed by the front included;
        # inferences in flight through the front finish before it exits.
        if front:
            front.stop(GRACE_S)
        gateway.close()
    if front and front.died:
        sys.exit(1)
