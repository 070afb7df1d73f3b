FROM scratch
CMD ['echo', 'hi']
