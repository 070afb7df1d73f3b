FROM alpine
RUN --mount=type=cache,target=/root/.cache/go-build \
  --mount=type=bind,source=go.sum,target=go.sum \
  --network=none go build ./...
RUN --mount=type=tmpfs,target=/tmp,size=64m --mount=type=secret,id=aws,target=/root/.aws/credentials --mount=type=ssh,required --security=insecure true
RUN --network=host --mount=type=cache,target=/var/cache/apt,sharing=locked,id=apt,mode=0700,uid=1,gid=2 apt-get update
RUN --mount=type=secret,target=/run/secrets/token,env=TOKEN,required=true --mount=target=/src,rw make
