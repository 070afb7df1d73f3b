FROM scratch
RUN echo 'we are running some # of cool things'
