#!/usr/bin/env bash
# Builds every twinbench image (gateway, the three trainers, Locust) with whichever builder is installed: docker or podman.
#
#   deploy/build-images.sh                  # what `make images` runs
#   DEVICE=cpu deploy/build-images.sh       # trainers with the CPU requirements, for hosts without a GPU
#
# Settings, from the environment:
#   CONTAINER_BUILDER  docker or podman (default: docker if its daemon answers, else podman)
#   DEVICE             cuda (default: the CUDA builds of the three frameworks) or cpu
#   BASE_IMAGE         the Python image to build on (default python:3.11.7-slim-bookworm). Left
#                      unset and with no registry answering, the local stand-in of
#                      deploy/base-image/make-base-image.sh is used (and made, if missing: root)
#   GO_BASE_IMAGE      the image the gateway's Go front is built in (default the official
#                      golang image of the Dockerfile's GO_VERSION; with the stand-in, the
#                      stand-in, which fetches that Go from the Go module proxy: GOPROXY)
#   PIP_CERT           a CA bundle pip needs inside the build (a proxy that re-signs TLS), handed
#                      to the build as a secret, never written into an image
#   IMAGE_TAG          the images' tag (default 0.1.0, as in deploy/docker-compose.yml)
set -euo pipefail
cd "$(dirname "$0")/.."

OFFICIAL_BASE=python:3.11.7-slim-bookworm
# The pinned Go of the gateway's Dockerfile, and its official image.
GO_VERSION=$(sed -n 's/^ARG GO_VERSION=//p' services/gateway/Dockerfile)
OFFICIAL_GO_BASE=golang:$GO_VERSION-bookworm
LOCAL_BASE=localhost/twinbench-base:bookworm-python3.11
DEVICE=${DEVICE:-cuda}
IMAGE_TAG=${IMAGE_TAG:-0.1.0}

die() { echo "build-images: $*" >&2; exit 1; }
# The first builder that works: a docker client with no daemon behind it does not count.
BUILDER=${CONTAINER_BUILDER:-}
if [ -z "$BUILDER" ]; then
  for candidate in docker podman; do
    if command -v "$candidate" >/dev/null && "$candidate" info >/dev/null 2>&1; then
      BUILDER=$candidate
      break
    fi
  done
fi
[ -n "$BUILDER" ] || die "no working image builder: install docker (with its daemon running) or podman"
case "$DEVICE" in cuda | cpu) ;; *) die "DEVICE is cuda or cpu, not '$DEVICE'" ;; esac

have_image() { "$BUILDER" image inspect "$1" >/dev/null 2>&1; }
available() { have_image "$1" || "$BUILDER" pull -q "$1" >/dev/null 2>&1; }

if [ -z "${BASE_IMAGE:-}" ]; then
  if available "$OFFICIAL_BASE" && available "${GO_BASE_IMAGE:-$OFFICIAL_GO_BASE}"; then
    BASE_IMAGE=$OFFICIAL_BASE
  else
    echo "build-images: $OFFICIAL_BASE cannot be pulled (no registry answers);"
    echo "build-images: building on the LOCAL STAND-IN $LOCAL_BASE (Debian's Python 3.11.2)"
    have_image "$LOCAL_BASE" || CONTAINER_BUILDER=$BUILDER deploy/base-image/make-base-image.sh "$LOCAL_BASE"
    BASE_IMAGE=$LOCAL_BASE
    GO_BASE_IMAGE=${GO_BASE_IMAGE:-$LOCAL_BASE}
  fi
fi
GO_BASE_IMAGE=${GO_BASE_IMAGE:-$OFFICIAL_GO_BASE}

args=(--build-arg "BASE_IMAGE=$BASE_IMAGE")
# Podman writes OCI images by default, and the OCI format has no HEALTHCHECK: ask for Docker's.
[ "$(basename "$BUILDER")" = podman ] && args+=(--format docker)
if [ -n "${PIP_CERT:-}" ]; then
  [ -r "$PIP_CERT" ] || die "PIP_CERT=$PIP_CERT is not a readable file"
  args+=(--secret "id=pip_cert,src=$PIP_CERT")
fi
suffix=$([ "$DEVICE" = cuda ] && echo -cuda || true)

# name, Dockerfile, extra build arguments
images=(
  "gateway services/gateway/Dockerfile --build-arg GO_BASE_IMAGE=$GO_BASE_IMAGE${GOPROXY:+ --build-arg GOPROXY=$GOPROXY}"
  "torch_trainer services/torch_trainer/Dockerfile --build-arg REQUIREMENTS=requirements/torch_trainer$suffix.txt"
  "tf_trainer services/tf_trainer/Dockerfile --build-arg REQUIREMENTS=requirements/tf_trainer$suffix.txt"
  "jax_trainer services/jax_trainer/Dockerfile --build-arg REQUIREMENTS=requirements/jax_trainer$suffix.txt"
  "locust loadtests/Dockerfile"
)
summary=()
for spec in "${images[@]}"; do
  read -r name dockerfile extra <<<"$spec"
  image=twinbench/$name:$IMAGE_TAG
  echo "build-images: $image from $dockerfile on $BASE_IMAGE ($DEVICE) with $(basename "$BUILDER")"
  start=$SECONDS
  # shellcheck disable=SC2086 # $extra holds whole arguments
  "$BUILDER" build -f "$dockerfile" -t "$image" "${args[@]}" $extra .
  size=$("$BUILDER" image inspect --format '{{.Size}}' "$image")
  summary+=("$(awk -v i="$image" -v b="$size" -v s=$((SECONDS - start)) \
    'BEGIN { printf "%-37s %6.2f GB  built in %d s", i, b / 1e9, s }')")
done
echo "build-images: done ($DEVICE, on $BASE_IMAGE)"
printf '  %s\n' "${summary[@]}"
