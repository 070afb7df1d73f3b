FROM scratch
ENTRYPOINT []
CMD []
