"""Entry point of the gateway service: `python -m services.gateway`."""

from twinbench.gateway.service import main

if __name__ == "__main__":
    main()
