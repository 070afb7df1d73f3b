FROM scratch
HEALTHCHECK --interval=10 CMD true
