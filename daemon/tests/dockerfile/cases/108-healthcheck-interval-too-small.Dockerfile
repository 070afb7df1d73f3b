FROM scratch
HEALTHCHECK --interval=500us CMD true
