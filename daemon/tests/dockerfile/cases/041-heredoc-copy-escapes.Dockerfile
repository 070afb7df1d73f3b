FROM alpine
ENV NAME=world
COPY <<EOF /greet
hello $NAME \$NAME 'single $NAME' "double"
EOF
