FROM scratch
VOLUME ["/data"]
VOLUME /var/log /var/db
ENV D=/srv
VOLUME $D "/with space"
