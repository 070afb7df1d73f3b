FROM scratch
HEALTHCHECK --interval=5m --timeout=3s \
  CMD curl -f http://localhost/ || exit 1
HEALTHCHECK --start-period=1m30s --start-interval=500ms --retries=5 CMD ["/bin/check", "-v"]
HEALTHCHECK NONE
