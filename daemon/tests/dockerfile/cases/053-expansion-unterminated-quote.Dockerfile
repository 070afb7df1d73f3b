FROM scratch
ENV A="abc
