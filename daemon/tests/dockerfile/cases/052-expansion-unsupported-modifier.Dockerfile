FROM scratch
ENV A=${B:1}
