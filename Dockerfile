# The Dataflow custom SDK container of beam_rnn: Apache Beam's Python SDK image with the
# package (beam_rnn + pipelines, and their dependencies from pyproject.toml) installed.
# Workers started with --sdk_container_image=IMAGE run every stage's DoFns in it, so
# nothing is installed when a worker starts (no --setup_file needed).  See docs/CONTAINERS.md.
#
#   docker build -t IMAGE .            or    gcloud builds submit --tag IMAGE .
#
# BEAM_VERSION must be the Beam release the pipeline is submitted with (the image's boot
# binary and SDK harness come from it), inside pyproject.toml's apache-beam range;
# tests/test_containers.py holds it to the version installed in the project's environment.
ARG BEAM_VERSION=2.77.0
FROM apache/beam_python3.11_sdk:${BEAM_VERSION}
ARG BEAM_VERSION

WORKDIR /opt/beam_rnn
# What `pip install .` builds from: the metadata (pyproject.toml, with README.md as its
# readme; setup.py for Beam's stager) and the two packages pyproject.toml includes.
COPY pyproject.toml setup.py README.md ./
COPY beam_rnn/ beam_rnn/
COPY pipelines/ pipelines/

# The project and its dependencies; apache-beam stays at the base image's release (a
# resolver that wanted another one fails the build instead of replacing the SDK).
RUN pip install --no-cache-dir . "apache-beam[gcp]==${BEAM_VERSION}"
RUN pip check

# The Beam SDK harness entrypoint of the base image (workers start the container with it).
ENTRYPOINT ["/opt/apache/beam/boot"]
