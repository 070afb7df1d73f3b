FROM scratch
RUN printf 'a\tb\n' > /x && echo \$HOME
