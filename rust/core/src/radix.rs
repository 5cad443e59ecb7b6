pub struct RadixCache;
