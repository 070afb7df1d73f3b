FROM scratch
EXPOSE 80/icmp
