# direc \
tive=value
FROM scratch
