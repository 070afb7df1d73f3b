FROM debian
RUN <<EOT bash
  set -ex
  apt-get update
EOT
