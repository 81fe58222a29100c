#!/usr/bin/env bash
# Makes a local stand-in for python:3.11.7-slim-bookworm from Debian's packages, for hosts that no image registry answers.
#
# The images' Dockerfiles start FROM the official python:3.11.7-slim-bookworm (and the gateway's
# front stage FROM debian:bookworm-slim). Where no registry can be reached, this script builds a
# Debian bookworm root file system with debootstrap from a Debian mirror, adds Debian's Python 3.11
# (3.11.2, not 3.11.7) and pip, and imports it as an image, so that the same Dockerfiles build:
#
#   deploy/base-image/make-base-image.sh            # prints the image's name when done
#   make images BASE_IMAGE=localhost/twinbench-base:bookworm-python3.11
#
# It is a stand-in, not the official image: Debian's python3 at /usr/bin (python and pip linked
# beside it), pip allowed to install into the system Python (the image is the application's
# own), and the label org.twinbench.base-image says so. Needs root, debootstrap, and docker or
# podman; about a minute and a half, and an image of about 150 MB.
set -euo pipefail

IMAGE=${1:-localhost/twinbench-base:bookworm-python3.11}
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
BUILDER=${CONTAINER_BUILDER:-$(command -v podman || true)}

die() { echo "make-base-image: $*" >&2; exit 1; }
[ "$(id -u)" = 0 ] || die "debootstrap needs root (run it with sudo)"
command -v debootstrap >/dev/null || die "debootstrap is missing (Debian/Ubuntu: apt install debootstrap)"
[ -n "$BUILDER" ] || die "podman is not installed (or set CONTAINER_BUILDER=docker)"

ROOTFS=$(mktemp -d /var/tmp/twinbench-rootfs.XXXXXX)
trap 'rm -rf "$ROOTFS"' EXIT

echo "make-base-image: debootstrap bookworm from $MIRROR into $ROOTFS"
# ca-certificates: pip reaches PyPI over HTTPS; passwd: the Dockerfiles' useradd.
debootstrap --variant=minbase --include=python3,python3-pip,ca-certificates,passwd \
  bookworm "$ROOTFS" "$MIRROR" >/dev/null

# What the official image offers and the Dockerfiles expect: `python` and `pip` on PATH, and pip
# free to install packages (Debian marks its Python as externally managed, PEP 668).
ln -sf python3 "$ROOTFS/usr/bin/python"
ln -sf pip3 "$ROOTFS/usr/bin/pip"
rm -f "$ROOTFS"/usr/lib/python3.*/EXTERNALLY-MANAGED
# Keep it lean: apt's lists and caches, documentation and locales are not needed at run time.
rm -rf "$ROOTFS"/var/lib/apt/lists/* "$ROOTFS"/var/cache/apt/*.bin "$ROOTFS"/var/cache/apt/archives/*.deb \
  "$ROOTFS"/usr/share/doc/* "$ROOTFS"/usr/share/man/* "$ROOTFS"/usr/share/locale/*
python_version=$(chroot "$ROOTFS" python3 -c 'import platform; print(platform.python_version())')

echo "make-base-image: importing it as $IMAGE with $BUILDER"
tar -C "$ROOTFS" -c . | "$BUILDER" import \
  --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
  --change 'ENV LANG=C.UTF-8' \
  --change "LABEL org.twinbench.base-image=\"local stand-in for python:3.11.7-slim-bookworm: Debian bookworm with Debian's Python $python_version\"" \
  --change 'CMD ["python3"]' \
  - "$IMAGE" >/dev/null

cat <<NOTE
make-base-image: built $IMAGE
  This image STANDS IN for the official python:3.11.7-slim-bookworm (and debian:bookworm-slim):
  Debian bookworm with Debian's Python $python_version and pip, made from $MIRROR.
  Images built on it are for this host; build on the official image for anything you publish.
NOTE
