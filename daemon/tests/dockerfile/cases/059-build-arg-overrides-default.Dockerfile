FROM busybox
ARG user1=someuser
ARG buildno=1
RUN echo $user1 $buildno
