FROM busybox AS one
ARG A=1
RUN echo $A

FROM busybox AS two
ENV B=${A:-missing}

FROM one AS three
ENV C=${A:-missing}
