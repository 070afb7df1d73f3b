FROM busybox
WORKDIR $PATH
ARG PATH=/override
ENV X=$PATH
RUN true
