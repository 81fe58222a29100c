"""Entry point of the gateway service: `python -m services.gateway`."""

import threading

from services.gateway.auth import BearerTokenInterceptor
from services.gateway.router import Gateway
from services.gateway.servicers import (
    GatewayInferenceServicer,
    GatewayTrainerServicer,
    inference_handler,
)
from twinbench.api import trainer_pb2_grpc
from twinbench.config import load_settings
from twinbench.grpc_server import (
    configure_logging,
    create_server,
    run_until_signalled,
    set_serving,
)


def main() -> None:
    configure_logging()
    settings = load_settings()
    gateway = Gateway(settings)
    interceptors = (
        (BearerTokenInterceptor(settings.token, settings.inference_open),) if settings.token else ()
    )
    if bool(settings.tls_cert) != bool(settings.tls_key):
        raise SystemExit("set both TWINBENCH_TLS_CERT and TWINBENCH_TLS_KEY, or neither")
    tls = (settings.tls_cert, settings.tls_key) if settings.tls_cert else None
    server, port, health = create_server(
        settings.listen_address("gateway"), settings, interceptors=interceptors, tls=tls
    )
    trainer_pb2_grpc.add_TrainerServicer_to_server(GatewayTrainerServicer(gateway), server)
    server.add_generic_rpc_handlers((inference_handler(GatewayInferenceServicer(gateway)),))
    server.start()
    stop = threading.Event()

    def become_ready() -> None:
        # Ready once both trainers answer; afterwards a trainer going down makes its own models
        # UNAVAILABLE but leaves the gateway serving the other trainer's.
        gateway.wait_ready(stop)
        if not stop.is_set():
            set_serving(health, True)

    threading.Thread(target=become_ready, name="gateway-ready", daemon=True).start()
    try:
        run_until_signalled(server, health, "gateway", port, settings, on_stop=stop.set)
    finally:
        gateway.close()


if __name__ == "__main__":
    main()
