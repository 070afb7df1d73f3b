FROM scratch
ENV SET=value EMPTY=
ENV A=${SET:-word} B=${UNSET:-word} C=${EMPTY:-word} D=${EMPTY-word}
ENV E=${SET:+alt} F=${UNSET:+alt} G=${EMPTY:+alt} H=${EMPTY+alt}
