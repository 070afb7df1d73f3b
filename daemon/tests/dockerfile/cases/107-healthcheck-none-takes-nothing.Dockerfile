FROM scratch
HEALTHCHECK --retries=3 NONE
