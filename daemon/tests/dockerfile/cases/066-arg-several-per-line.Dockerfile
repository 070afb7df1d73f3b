FROM scratch
ARG A=1
ARG A=2 B=$A C
ENV X=$A$B
