#!/usr/bin/env bash
# gpu_session.sh: build and test ctune on a borrowed GPU machine that has CUDA (nvcc,
# cuBLAS), CMake and a compiler, but none of ctune's C dependencies and no package
# registry. Two halves:
#
#   scripts/gpu_session.sh fetch      HERE (Debian, registry reachable): downloads the .deb
#                                     files of the C dependencies into build-debs/ (ignored
#                                     by git through /build*/, so the device tool can carry it).
#   scripts/gpu_session.sh run [--no-e2e] [--no-tests] [cmd...]
#                                     THERE (carry build-debs): unpacks every .deb into a
#                                     private prefix (never into /), configures and builds
#                                     ctune against it, runs `ctest -L gpu`, test_model(_mixed) and
#                                     test_pack, then scripts/gpu_e2e.sh (the tiny runs: GPU
#                                     vs CPU loss curves, resume, rank counts; --no-e2e skips
#                                     it, --no-tests skips every test), then the optional
#                                     benchmark command; all logs go to $OUT (or <build>/logs
#                                     without $OUT), gpu_e2e.sh's runs to $OUT/e2e.
#
# One device command may run 10 minutes: `run` alone (build, tests, e2e) is budgeted for
# about 9 on an H100 machine (16 cores): gpu_e2e.sh gets what is left of 9 minutes after the
# build and tests (at least 2), and stops its runs when that is spent. The benchmark can be
# a second command (the machine is usually handed back between calls, and the build takes
# ~25 s again), or the same one with --no-e2e: docs/benchmarks/gpu-notes.md has the
# one-command round the first GPU session used.
#   scripts/gpu_session.sh run --no-tests scripts/bench_gpu.sh
#
# What is fetched: the -dev packages and their runtime libraries, plus the closure of the
# shared libraries those load, minus what every image with a compiler has (libc, libm,
# libstdc++, libgcc_s, libgomp, zlib). Environment knobs:
#   CTUNE_DEBS       folder of .deb files (default: build-debs in the repository root)
#   CTUNE_PREFIX     where run unpacks them (default: /tmp/ctune-deps)
#   CTUNE_CUDA_ARCH  CMAKE_CUDA_ARCHITECTURES for run (default: 90a)
#   CTUNE_RUN_BUILD  build folder for run (default: build-gpu)
#   CTUNE_E2E_STEPS  steps per gpu_e2e.sh run (default 200)
#   CTUNE_RUN_BUDGET_S  seconds the whole run may take before gpu_e2e.sh is cut off (540)
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
DEBS=${CTUNE_DEBS:-$ROOT/build-debs}
PREFIX=${CTUNE_PREFIX:-/tmp/ctune-deps}
ARCH_DIR=x86_64-linux-gnu

# Headers, link-time .so symlinks and pkg-config files, and the runtime libraries they
# point at; everything else comes from the closure over the ELF files' DT_NEEDED entries.
DEV_PACKAGES="libopenmpi-dev libyaml-dev libhdf5-dev libcjson-dev libpcre2-dev
  libopenblas-openmp-dev libopenblas-dev pkgconf pkgconf-bin pkg-config
  libopenmpi3 openmpi-bin openmpi-common libyaml-0-2 libhdf5-103-1 libhdf5-hl-100
  libcjson1 libpcre2-8-0 libpcre2-16-0 libpcre2-32-0 libpcre2-posix3 libopenblas0-openmp
  libpkgconf3 libpsm-infinipath1"
# Libraries of any image that can run nvcc and a compiler: never shipped.
BASE_SONAMES="libc.so.6 libm.so.6 libpthread.so.0 libdl.so.2 librt.so.1 libresolv.so.2
  libutil.so.1 ld-linux-x86-64.so.2 libgcc_s.so.1 libstdc++.so.6 libgomp.so.1 libz.so.1"

# Package dependencies are much wider than what the programs load (Open MPI's package
# pulls X11 through hwloc's optional plugins, HDF5's -dev package a whole curl/ssl/ldap
# stack), so the closure follows the shared libraries actually linked: every ELF file of
# the unpacked packages, its DT_NEEDED sonames, the installed package that owns each
# missing one (dpkg -S: this machine has ctune's dependencies installed), until nothing
# is missing.
fetch() {
    command -v apt-get >/dev/null && command -v readelf >/dev/null ||
        { echo "fetch: needs apt-get and readelf (run it on the Debian dev machine)" >&2; exit 1; }
    mkdir -p "$DEBS"
    FETCH_TREE=$(mktemp -d)
    trap 'rm -rf "$FETCH_TREE"' EXIT
    local tree=$FETCH_TREE
    local wanted
    wanted=$(echo $DEV_PACKAGES)
    for round in 1 2 3 4 5 6 7 8; do
        echo "fetch: round $round: $wanted"
        (cd "$DEBS" && apt-get download $wanted >/dev/null) || { echo "fetch: apt-get download failed" >&2; exit 1; }
        for deb in "$DEBS"/*.deb; do dpkg-deb -x "$deb" "$tree"; done
        local needed provided missing=""
        needed=$(find "$tree" -type f \( -name '*.so*' -o -path '*/bin/*' \) -print0 |
            xargs -0 readelf -d 2>/dev/null | sed -n 's/.*(NEEDED).*\[\(.*\)\]/\1/p' | sort -u || true)
        provided=$(find "$tree" \( -type f -o -type l \) -name '*.so*' -printf '%f\n' | sort -u)
        for soname in $needed; do
            case " $(echo $BASE_SONAMES) " in *" $soname "*) continue ;; esac
            # A package may ship only the versioned file (libx.so.1.16); run's ldconfig -n
            # makes the soname link.
            grep -qE "^${soname//./\\.}(\\.[0-9]+)*\$" <<<"$provided" || missing="$missing $soname"
        done
        [ -z "$missing" ] && break
        wanted=""
        for soname in $missing; do
            local owner
            owner=$(dpkg -S "*/$soname" 2>/dev/null | head -1 | cut -d: -f1 || true)
            if [ -z "$owner" ]; then echo "fetch: warning: no installed package has $soname" >&2; continue; fi
            case " $wanted " in *" $owner "*) ;; *) wanted="$wanted $owner" ;; esac
        done
        wanted=$(echo $wanted)
        [ -z "$wanted" ] && break
    done
    echo "fetch: $(ls "$DEBS"/*.deb | wc -l) packages, $(du -sh "$DEBS" | cut -f1) in $DEBS:"
    ls "$DEBS"
}

run() {
    local started=$SECONDS e2e=1 tests=1
    while [ $# -gt 0 ]; do
        case "$1" in
        --no-e2e) e2e=0 ;;
        --no-tests) tests=0 e2e=0 ;;
        *) break ;;
        esac
        shift
    done
    local build=${CTUNE_RUN_BUILD:-$ROOT/build-gpu}
    local out=${OUT:-$build/logs}
    mkdir -p "$out"
    exec > >(tee "$out/session.log") 2>&1
    echo "== machine"
    # sed, not head: under pipefail a writer cut off by head fails with SIGPIPE.
    (sed -n 1,4p /etc/os-release; ldd --version | sed -n 1p; nvidia-smi || true; nvcc --version | tail -2;
     cmake --version | sed -n 1p) 2>&1 || true

    echo "== unpacking $(ls "$DEBS"/*.deb | wc -l) packages into $PREFIX"
    mkdir -p "$PREFIX"
    for deb in "$DEBS"/*.deb; do
        if command -v dpkg-deb >/dev/null; then
            dpkg-deb -x "$deb" "$PREFIX"
        else  # not a Debian-based image: a .deb is an ar archive holding data.tar.*
            local member scratch
            member=$(ar t "$deb" | grep '^data\.tar')
            scratch=$(mktemp -d)
            (cd "$scratch" && ar x "$deb" "$member") && tar -xf "$scratch/$member" -C "$PREFIX"
            rm -rf "$scratch"
        fi
    done
    local lib=$PREFIX/usr/lib/$ARCH_DIR
    # dpkg -x runs no maintainer scripts: make the soname links ldconfig would make, and
    # the links Debian selects through update-alternatives.
    find "$PREFIX" -name '*.so.*' -printf '%h\n' | sort -u | xargs -r ldconfig -n
    ln -sf pkgconf "$PREFIX/usr/bin/pkg-config"
    ln -sf mpirun.openmpi "$PREFIX/usr/bin/mpirun"

    # The .pc files say prefix=/usr: the sysroot prepends $PREFIX to their -I and -L paths.
    export PKG_CONFIG_SYSROOT_DIR=$PREFIX
    export PKG_CONFIG_LIBDIR=$lib/openblas-openmp/pkgconfig:$lib/pkgconfig:$PREFIX/usr/share/pkgconfig
    export PKG_CONFIG_PATH=$PKG_CONFIG_LIBDIR
    export PATH=$PREFIX/usr/bin:$PATH
    export LD_LIBRARY_PATH=$lib:$lib/openblas-openmp:$lib/hdf5/serial:$lib/openmpi/lib:$PREFIX/usr/lib/libpsm1${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
    export CMAKE_PREFIX_PATH=$PREFIX/usr
    # Open MPI finds its plugins and help files relative to OPAL_PREFIX; the machine
    # runs commands as root.
    export OPAL_PREFIX=$PREFIX/usr OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
    export OMPI_MCA_plm_rsh_agent=false

    echo "== configure"
    local mpi_lib=$lib/openmpi/lib/libmpi.so  # libopenmpi-dev's link-time name
    cmake -S "$ROOT" -B "$build" -DCMAKE_BUILD_TYPE=Release \
        -DCMAKE_CUDA_ARCHITECTURES="${CTUNE_CUDA_ARCH:-90a}" \
        -DPKG_CONFIG_EXECUTABLE="$PREFIX/usr/bin/pkgconf" \
        -DMPI_SKIP_COMPILER_WRAPPER=ON -DMPI_C_LIB_NAMES=mpi -DMPI_mpi_LIBRARY="$mpi_lib" \
        -DMPI_C_ADDITIONAL_INCLUDE_DIRS="$lib/openmpi/include" \
        -DHDF5_C_COMPILER_EXECUTABLE=/nonexistent -DHDF5_PREFER_PARALLEL=OFF \
        -DHDF5_C_INCLUDE_DIR="$PREFIX/usr/include/hdf5/serial" \
        >"$out/configure.log" 2>&1 || { cat "$out/configure.log"; echo "configure failed"; exit 1; }
    grep -E "MPI|HDF5|Found|CUDA" "$out/configure.log" || true

    echo "== build"
    cmake --build "$build" -j "$(nproc)" >"$out/build.log" 2>&1 ||
        { tail -60 "$out/build.log"; echo "build failed"; exit 1; }
    grep -E "warning:|error:" "$out/build.log" || echo "(no warnings)"

    local status=0
    echo "== built after $((SECONDS - started)) s"
    if [ "$tests" = 1 ]; then
        echo "== ctest -L gpu"
        (cd "$build" && ctest -L gpu --output-on-failure) 2>&1 | tee "$out/ctest_gpu.log" || status=1
        echo "== test_model, test_model_mixed, test_pack (their CUDA passes run where a GPU is usable)"
        (cd "$build" && ctest -R '^(test_model|test_model_mixed|test_pack)$' --output-on-failure) 2>&1 |
            tee "$out/ctest_model.log" || status=1
        echo "== tests done after $((SECONDS - started)) s"
    fi
    if [ "$e2e" = 1 ]; then
        local left=$(( ${CTUNE_RUN_BUDGET_S:-540} - (SECONDS - started) ))
        [ "$left" -lt 120 ] && left=120
        echo "== gpu_e2e.sh (at most $left s)"
        # gpu_e2e.sh keeps to its --time-limit itself; the outer timeout only guards a hang.
        local e2e_status=0
        OUT=$out timeout -k 10 $((left + 60)) "$ROOT/scripts/gpu_e2e.sh" --ctune "$build/ctune" \
            --steps "${CTUNE_E2E_STEPS:-200}" --time-limit "$left" 2>&1 | tee "$out/e2e.log" ||
            e2e_status=${PIPESTATUS[0]}
        [ "$e2e_status" = 0 ] || status=1
        if [ "$e2e_status" = 124 ]; then echo "gpu_e2e.sh: killed after $((left + 60)) s"; fi
    fi
    if [ $# -gt 0 ]; then
        echo "== benchmark: $*"
        (cd "$ROOT" && CTUNE_BUILD_DIR=$build "$@") 2>&1 | tee "$out/benchmark.log" || status=1
    fi
    echo "== done (status $status)"
    return $status
}

case "${1:-}" in
fetch) fetch ;;
run) shift; run "$@" ;;
*) echo "usage: $0 fetch | run [--no-e2e] [--no-tests] [benchmark command...]" >&2; exit 2 ;;
esac
