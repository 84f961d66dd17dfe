/* The floor: a static C program that does nothing. */
int main(void) { return 0; }
