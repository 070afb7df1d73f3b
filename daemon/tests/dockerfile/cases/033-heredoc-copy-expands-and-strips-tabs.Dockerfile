FROM alpine
ARG FOO=bar
COPY <<-EOT /script.sh
	echo "hello ${FOO}"
EOT
ENTRYPOINT ash /script.sh
