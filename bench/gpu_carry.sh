#!/usr/bin/env bash
# Fill the folders a device run of bench/gpu_perf.sh carries (both ignored by git; about 50 MiB together, under the
# 64 MiB a device run takes along with the working tree):
#   .whl/       the wheels the device image lacks (MONAI, pydantic, foolbox, ART, torchattacks and
#               their small dependencies;
#               the image runs Python 3.12 and has torch, NumPy, SciPy, scikit-learn, typer, rich). Ray's wheel
#               (79 MB) does not fit, so gpu_perf.sh skips the Ray step where Ray is absent.
#   .gpu_data/  PneumoniaMNIST and the Kermany chest X-rays, copied from ../shared/data
# Then, on the device (run's command, carry [".whl", ".gpu_data"]):
#   pip install -q --no-index --no-deps .whl/*.whl && OUT=$OUT DATA=.gpu_data bash bench/gpu_perf.sh
set -eu
PIP=${PIP:-pip}
SRC=${SRC:-../shared/data}
mkdir -p .whl .gpu_data
$PIP download -q --no-deps --only-binary=:all: --python-version 3.12 --platform manylinux2014_x86_64 -d .whl \
  monai==1.6.1 pydantic==2.14.4 pydantic-core==2.50.5 annotated-types==0.8.0 typing-inspection==0.4.5 \
  foolbox==3.3.4 eagerpy==0.30.0 gitpython==3.2.1 gitdb==4.0.12 smmap==5.0.3 adversarial-robustness-toolbox==1.20.1 \
  torchattacks==3.5.1   # not pyautoattack: its 42 MB wheel does not fit either
cp "$SRC/pneumoniamnist.npz" .gpu_data/
cp -r "$SRC/chest_xray" .gpu_data/
du -sh .whl .gpu_data
